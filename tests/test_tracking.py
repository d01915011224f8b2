"""Tests of tracking.py (OKS, One-Euro filter, ids) and of demo.py's tracked video output."""

import json
import math

import cv2
import numpy as np
import pytest

import config
import demo
import parsing
import synthetic
import tracking
from config import NUM_JOINTS
from conftest import save_tiny_checkpoint


def walking_people(frames, count=3, step=(6.0, 1.0), seed=0, jitter=0.0):
    """Per frame, (count, 14, 3) keypoints of synthetic people 90 px tall walking side by side,
    person k starting with its neck at (50 + 90 k, 60)."""
    starts = [(50.0 + 90.0 * index, 60.0) for index in range(count)]
    return synthetic.walking_people(frames, starts, step, 90.0, seed, jitter)


def video_config(**overrides):
    return config.make_config("tiny", **overrides)


def test_keypoint_similarity_by_hand():
    track = np.zeros((1, NUM_JOINTS, 3))
    track[0, 0] = [0, 0, 1]
    track[0, 13] = [30, 40, 1]  # box 30 x 40: area 1200
    detection = np.zeros((1, NUM_JOINTS, 3))
    detection[0, 0] = [3, 4, 1]  # 5 pixels away: d^2 = 25
    detection[0, 13] = [30, 40, 1]
    detection[0, 5] = [99, 99, 1]  # not in the track
    delta = 2 * config.AIC_OKS_SIGMAS[0]
    # Three joints found in either person: joint 5 (only in the detection) counts 0.
    expected = (math.exp(-25 / 2 / delta ** 2 / 1201) + 1.0) / 3
    assert tracking.keypoint_similarity(track, detection)[0, 0] == pytest.approx(expected)
    wider = (math.exp(-25 / 2 / (3 * delta) ** 2 / 1201) + 1.0) / 3
    assert tracking.keypoint_similarity(track, detection, 3.0)[0, 0] == pytest.approx(wider)
    elsewhere = np.zeros((1, NUM_JOINTS, 3))
    elsewhere[0, 7] = [30, 40, 1]  # no joint in common
    assert tracking.keypoint_similarity(track, elsewhere).tolist() == [[0.0]]
    assert tracking.keypoint_similarity(track, np.zeros((0, NUM_JOINTS, 3))).shape == (1, 0)


def test_one_euro_filter_by_hand():
    smoother = tracking.OneEuroFilter(min_cutoff=1.0, beta=0.0, derivative_cutoff=1.0)
    found = np.ones(NUM_JOINTS, dtype=bool)
    start = np.zeros((NUM_JOINTS, 2))
    assert (smoother(start, found, 0.0) == 0).all()  # the first value passes unchanged
    moved = np.full((NUM_JOINTS, 2), 10.0)
    # alpha = 1 / (1 + tau / dt) with tau = 1 / (2 pi 1 Hz), dt = 0.1 s.
    alpha = 1.0 / (1.0 + 1.0 / (2 * math.pi) / 0.1)
    assert smoother(moved, found, 0.1) == pytest.approx(np.full((NUM_JOINTS, 2), 10 * alpha))
    missing = found.copy()
    missing[3] = False
    result = smoother(np.full((NUM_JOINTS, 2), 20.0), missing, 0.2)
    assert (result[3] == 20.0).all() and (result[0] < 20.0).all()
    # Joint 3 reappears: it starts afresh from its new position.
    assert (smoother(np.full((NUM_JOINTS, 2), 30.0), found, 0.3)[3] == 30.0).all()


def defaults_of(cfg):
    return cfg.one_euro_min_cutoff, cfg.one_euro_beta, cfg.one_euro_derivative_cutoff


def test_one_euro_filter_removes_jitter_at_rest_and_follows_fast_moves():
    rng = np.random.default_rng(1)
    found = np.ones(NUM_JOINTS, dtype=bool)
    defaults = config.Config()
    noisy = 100.0 + rng.normal(0.0, 2.0, size=(100, NUM_JOINTS, 2))
    for parameters, ratio in ((defaults_of(defaults), 0.6), ((1.0, 0.0, 1.0), 0.4)):
        still = tracking.OneEuroFilter(*parameters)
        smoothed = np.stack([still(values, found, index / 25)
                             for index, values in enumerate(noisy)])
        assert smoothed[20:].std() < noisy[20:].std() * ratio
    lags = []
    for beta in (0.0, defaults.one_euro_beta):
        moving = tracking.OneEuroFilter(1.0, beta, 1.0)
        for index in range(50):  # 20 pixels per frame at 25 frames/s
            last = moving(np.full((NUM_JOINTS, 2), 20.0 * index), found, index / 25)
        lags.append(20.0 * 49 - last[0, 0])
    assert lags[1] < lags[0] / 3  # speed raises the cutoff: much less lag


def test_id_switches_by_hand():
    assert tracking.id_switches([{"a": 1, "b": 2}, {"a": 1}, {"a": 2, "b": 2}, {"a": 2}]) == 1
    assert tracking.id_switches([{"a": 1}, {"a": 3}, {"a": 1}]) == 2


def test_ids_survive_shuffles_jitter_and_two_missed_frames():
    cfg = video_config(temporal_smoothing=False, track_max_missed=2)
    tracker, rng, assignments = tracking.Tracker(cfg), np.random.default_rng(2), []
    for frame, people in enumerate(walking_people(20, jitter=1.5)):
        present = [index for index in range(3) if not (frame in (5, 6) and index == 1)]
        order = rng.permutation(present)  # the parser's order means nothing
        ids, output = tracker.update(people[order], frame / 25)
        assert (output == people[order].astype(np.float32)).all()  # no smoothing asked
        assignments.append(dict(zip(order.tolist(), ids.tolist())))
    assert tracking.id_switches(assignments) == 0
    assert sorted(set(assignments[-1].values())) == [1, 2, 3]


def test_a_track_missed_too_long_retires_and_a_newcomer_gets_a_new_id():
    cfg = video_config(track_max_missed=2)
    tracker = tracking.Tracker(cfg)
    sequence = walking_people(10, count=2)
    seen = []
    for frame, people in enumerate(sequence):
        shown = people[:1] if 2 <= frame <= 5 else people  # person 1 gone for 4 frames
        ids, _ = tracker.update(shown, frame / 25)
        seen.append(ids.tolist())
    assert seen[0] == [1, 2] and seen[2] == [1] and seen[6] == [1, 3]


def render_video(path, sequence, size=(160, 400), fps=10):
    """Write the walking people of `sequence` drawn by synthetic.py as an MJPG video."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (size[1], size[0]))
    for image in synthetic.video_frames(sequence, size, seed=3):
        writer.write(image)
    writer.release()


def test_a_synthetic_video_keeps_ids_and_writes_every_frame(tmp_path, monkeypatch):
    frames = 12
    sequence = walking_people(frames, step=(5.0, 0.5), jitter=1.0)
    source = tmp_path / "walk.avi"
    render_video(source, sequence)
    checkpoint, _ = save_tiny_checkpoint(tmp_path / "run")
    # The tiny random network finds nobody, so the parser is replaced by an oracle that
    # returns each frame's true people in a shuffled order (frames are parsed in order).
    rng, orders, calls = np.random.default_rng(4), [], iter(sequence)

    def oracle(*args, **kwargs):
        people = next(calls)
        orders.append(rng.permutation(len(people)))
        return people[orders[-1]].astype(np.float32), np.ones(len(people), np.float32)

    monkeypatch.setattr(parsing, "parse_poses", oracle)
    out = tmp_path / "frames.json"
    assert demo.main(["--model", checkpoint, "--video", str(source), "--json", str(out)]) == 0
    capture = cv2.VideoCapture(str(tmp_path / "walk_pose.mp4"))
    written = 0
    while capture.read()[0]:
        written += 1
    capture.release()
    assert written == frames
    lines = (tmp_path / "walk_pose.jsonl").read_text().splitlines()
    assert len(lines) == frames
    assignments = []
    for index, line in enumerate(lines):
        record = json.loads(line)
        assert record["frame"] == index and record["time"] == pytest.approx(index / 10)
        assert all(len(person["keypoints"]) == NUM_JOINTS and
                   all(len(joint) == 3 for joint in person["keypoints"])
                   for person in record["people"])
        assignments.append({int(true): person["id"]
                            for true, person in zip(orders[index], record["people"])})
    assert tracking.id_switches(assignments) == 0 and assignments[-1] == assignments[0]
    # --json (scoring) holds the parser's people unsmoothed; the tracks file is smoothed.
    entries = json.loads(out.read_text())
    assert len(entries) == frames
    last = np.array(entries[-1]["keypoint_annotations"]["human1"]).reshape(NUM_JOINTS, 3)
    truth = sequence[-1][orders[-1][0]]
    assert np.abs(last[:, :2] - truth[:, :2]).max() <= 0.006
    smoothed = np.array(json.loads(lines[-1])["people"][0]["keypoints"])
    assert np.abs(smoothed[:, :2] - truth[:, :2]).max() > 0.1


def test_show_without_a_gui_is_a_clear_error(tmp_path, monkeypatch, capsys):
    def no_window(*args):
        raise cv2.error("The function is not implemented")

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(cv2, "namedWindow", no_window)
    status = demo.main(["--model", str(tmp_path / "none.keras"), "--video", "0", "--show"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1
    assert "opencv-python-headless" in error and "install opencv-python" in error
