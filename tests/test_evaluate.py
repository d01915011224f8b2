"""Tests for evaluate.py: the command line, and the model/oracle modes on tiny data (the metric
itself is tested in test_aic_metric.py)."""

import errno
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import config
import evaluate
from tests.test_aic_metric import ladder, record

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "evaluate")
REFERENCE_SMALL = os.path.join(DATA, "reference_small.json")
PREDICTIONS_SMALL = os.path.join(DATA, "predictions_small.json")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ command line
def test_cli_prints_warnings_table_and_score_last(capsys):
    status = evaluate.main(["--submit", PREDICTIONS_SMALL, "--ref", REFERENCE_SMALL])
    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    # img_a: 2 of 2 (swapped order, '.jpg' stripped); img_b: 1 found of max(1, 2 valid);
    # img_c missing: 1. Score 3 / 5 at every threshold.
    assert lines[-1] == "Score: 0.60000000"
    assert "warning: img_c is not in the prediction JSON file." in lines
    assert any(line.startswith("warning: img_b human3:") for line in lines)
    assert any("has no key 'image_id'" in line for line in lines)


def test_cli_json_output_parses(tmp_path, capsys):
    json_out = tmp_path / "scores.json"
    status = evaluate.main(["--submit", PREDICTIONS_SMALL, "--ref", REFERENCE_SMALL, "--json",
                            "--json_out", str(json_out)])
    out = capsys.readouterr().out
    assert status == 0 and len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert result["score"] == pytest.approx(0.6)
    assert set(result["per_threshold"]) == {f"{t:.2f}" for t in np.linspace(0.5, 0.95, 10)}
    assert (result["spurious_people"], result["missed_people"]) == (1, 1)
    assert len(result["per_keypoint"]) == 14
    assert json.loads(json_out.read_text()) == result


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the predictions file"),
    ("[{\"image_id\": ", "is not valid JSON"),
    ("{\"image_id\": \"a\"}", "must hold a JSON list"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
])
def test_unreadable_predictions_exit_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "pred.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    status = evaluate.main(["--submit", str(path), "--ref", REFERENCE_SMALL])
    captured = capsys.readouterr()
    assert status == 2
    assert len(captured.err.strip().splitlines()) == 1
    assert str(path) in captured.err and message in captured.err


def test_malformed_reference_exits_2_via_subprocess(tmp_path):
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps([{"image_id": "a", "keypoint_annotations": {"h": [1, 2]},
                                      "human_annotations": {"h": [0, 0, 1, 1]}}]))
    completed = subprocess.run(
        [sys.executable, "evaluate.py", "--submit", PREDICTIONS_SMALL, "--ref", str(reference)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "evaluate.py: error: reference record 0 (a) h: keypoints must be 42 numbers"]


def test_missing_ref_is_a_usage_error():
    with pytest.raises(SystemExit) as raised:
        evaluate.main(["--submit", PREDICTIONS_SMALL])
    assert raised.value.code == 2


# ------------------------------------------------------------------------------ model mode
@pytest.fixture
def fake_model_mode(tmp_path, monkeypatch):
    """An image folder and a stand-in checkpoint whose 'network' answers by image width."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "img_a.jpg"), np.zeros((90, 240, 3), np.uint8))
    cv2.imwrite(str(images / "img_b.png"), np.zeros((140, 100, 3), np.uint8))
    (images / "img_c.jpg").write_bytes(b"not a jpeg")
    answers = {240: [ladder(10, 10), ladder(200, 10)], 100: [ladder(50, 50)]}

    def fake_stream(model, items, cfg, chunk_size=None, workers=1):
        # The checkpoint's config arrives with the command line's override on top.
        assert model == "network" and cfg.preset == "cpu" and cfg.min_parts == 2
        for key, image in items:
            people = np.array(answers[image.shape[1]], dtype=np.float32).reshape(-1, 14, 3)
            yield key, inference.Estimate(people, np.ones(len(people), np.float32), None, None,
                                          None)

    import inference
    monkeypatch.setattr(inference, "estimate_poses_stream", fake_stream)
    import runtimes
    monkeypatch.setattr(runtimes, "load_for_inference", lambda path, overrides: (
        "network", config.inference_config(config.make_config("cpu"), overrides)))
    return images


def test_model_mode_writes_submission_and_scores(fake_model_mode, tmp_path, capsys):
    out = tmp_path / "pred.json"
    status = evaluate.main(["--model", "ckpt.keras", "--images", str(fake_model_mode), "--ref",
                            REFERENCE_SMALL, "--out", str(out), "--json", "--no_progress",
                            "--min_parts", "2"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0
    written = json.loads(out.read_text())
    assert [entry["image_id"] for entry in written] == ["img_a", "img_b"]
    # img_c is unreadable: skipped with a warning, then scored as missing: 3 of 4 people.
    assert any("img_c.jpg" in warning for warning in result["warnings"])
    assert result["score"] == pytest.approx(0.75) and result["missing_images"] == 1


@pytest.mark.parametrize("flag, calls", [([], 1), (["--retain_freed_memory", "false"], 0)])
def test_model_mode_keeps_freed_memory_unless_told_not_to(fake_model_mode, tmp_path,
                                                          monkeypatch, capsys, flag, calls):
    called = []
    monkeypatch.setattr(evaluate.utils, "retain_freed_memory",
                        lambda: called.append(True) or True)
    assert evaluate.main(["--model", "ckpt.keras", "--images", str(fake_model_mode), "--ref",
                          REFERENCE_SMALL, "--out", str(tmp_path / "pred.json"), "--json",
                          "--no_progress", "--min_parts", "2", *flag]) == 0
    assert len(called) == calls


@pytest.mark.parametrize("option", ["--out", "--json_out"])
def test_an_unwritable_output_fails_before_any_work(fake_model_mode, tmp_path, monkeypatch,
                                                   capsys, option):
    (tmp_path / "a_file").write_text("x")  # A folder's place taken by a file: fails for root too.
    out = tmp_path / "a_file" / "pred.json"

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the outputs were checked")
    monkeypatch.setattr(sys.modules["runtimes"], "load_for_inference", no_work)
    status = evaluate.main(["--model", "ckpt.keras", "--images", str(fake_model_mode), "--ref",
                            REFERENCE_SMALL, option, str(out), "--no_progress"])
    assert status == 2
    assert capsys.readouterr().err == (f"evaluate.py: error: {out}: cannot write this file "
                                       f"({tmp_path / 'a_file'} is not a folder)\n")


def test_a_disk_that_fills_up_at_the_end_is_one_line(fake_model_mode, tmp_path, monkeypatch,
                                                     capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(evaluate.utils.os, "fsync", full)
    out = tmp_path / "pred.json"
    status = evaluate.main(["--model", "ckpt.keras", "--images", str(fake_model_mode),
                            "--out", str(out), "--no_progress", "--min_parts", "2"])
    assert status == 2 and not out.exists()
    assert capsys.readouterr().err == (f"evaluate.py: error: {out}: cannot write this file "
                                       "(No space left on device)\n")


def test_a_file_that_is_not_a_keras_archive_is_one_line(tmp_path, capsys):
    (tmp_path / "best.keras").write_text("not a model")
    config.save_config(config.make_config("tiny"), str(tmp_path / "config.json"))
    status = evaluate.main(["--model", str(tmp_path / "best.keras"), "--images", str(tmp_path),
                            "--out", str(tmp_path / "pred.json"), "--no_progress"])
    assert status == 2
    assert capsys.readouterr().err == (f"evaluate.py: error: {tmp_path / 'best.keras'}: not a "
                                       "Keras .keras archive (train.py writes those)\n")
    assert not (tmp_path / "pred.json").exists()


def test_model_mode_refuses_a_setting_that_is_not_an_inference_one(fake_model_mode, capsys):
    status = evaluate.main(["--model", "ckpt.keras", "--images", str(fake_model_mode),
                            "--stride", "8", "--no_progress"])
    assert status == 2 and "--stride is fixed by the checkpoint" in capsys.readouterr().err


def test_model_mode_without_reference_only_writes_submission(fake_model_mode, tmp_path,
                                                             capsys):
    out = tmp_path / "test_a.json"
    status = evaluate.main(["--model", "ckpt.keras", "--images", str(fake_model_mode),
                            "--out", str(out), "--no_progress", "--min_parts", "2",
                            "--limit", "2"])
    captured = capsys.readouterr()
    assert status == 0 and "Score" not in captured.out
    written = json.loads(out.read_text())
    assert [entry["image_id"] for entry in written] == ["img_a", "img_b"]
    assert sorted(written[0]["keypoint_annotations"]) == ["human1", "human2"]


# ------------------------------------------------------------------------------ oracle
def test_oracle_canvas_and_grid_by_hand():
    keypoints = np.zeros((1, 14, 3))
    keypoints[0, 0] = [100, 50, 1]
    keypoints[0, 1] = [700, 900, 3]  # unlabelled: ignored
    boxes = np.array([[10, 10, 120, 200]], dtype=np.float64)
    canvas = evaluate.oracle_canvas({}, keypoints, boxes)
    assert canvas == pytest.approx((120 * 1.05 + 8, 200 * 1.05 + 8))
    assert evaluate.oracle_canvas({"width": 640, "height": 480}, keypoints, boxes) == (640, 480)
    cfg = config.make_config("cpu", inference_height=192, stride=4)
    factor, grid = evaluate.oracle_grid((640.0, 480.0), cfg)
    assert factor == pytest.approx(0.4)
    assert grid == (48, 64)


def skeleton(x0):
    """A plausible standing person (42 numbers, all visible) whose box starts at x = x0."""
    joints = [(60, 100), (40, 160), (30, 220), (140, 100), (160, 160), (170, 220), (75, 230),
              (70, 310), (65, 390), (125, 230), (130, 310), (135, 390), (100, 20), (100, 90)]
    return [value for x, y in joints for value in (x0 + x, y, 1)]


def test_oracle_recovers_well_separated_people():
    references = [dict(record("o1", {"human1": (skeleton(0), [20, 10, 180, 400]),
                                     "human2": (skeleton(260), [280, 10, 440, 400])}),
                       width=480, height=420),
                  record("o2", {"human1": (skeleton(40), [60, 10, 220, 400])})]
    cfg = config.make_config("cpu")
    predictions, timing = evaluate.oracle_predictions(references, cfg)
    assert [entry["image_id"] for entry in predictions] == ["o1", "o2"]
    assert timing["images"] == 2 and timing["render_ms"] > 0 and timing["parse_ms"] > 0
    result = evaluate.aic_map(predictions, references)
    assert result["num_pred"] == 3 and result["ap50"] == 1.0
    assert result["missed_people"] == 0 and result["spurious_people"] == 0
    only_first, _ = evaluate.oracle_predictions(references, cfg, limit=1)
    assert [entry["image_id"] for entry in only_first] == ["o1"]


def test_batched_predictions_equal_the_one_at_a_time_path(tmp_path):
    """A tiny random network over images of several sizes: the batched, threaded path writes
    exactly the predictions of the one-image-at-a-time path."""
    import model

    cfg = config.make_config("tiny", scales=(1.0, 1.5), inference_batch=3, peak_threshold=0.0,
                             paf_threshold=-1.0, min_parts=2, min_person_score=-10.0)
    network = model.build_model(cfg)
    rng = np.random.default_rng(5)
    items = []
    for index, (height, width) in enumerate([(40, 56), (50, 30), (40, 60), (64, 64), (40, 56)]):
        path = tmp_path / f"img{index}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        items.append((f"img{index}", str(path)))
    items.append(("gone", None))
    one_warnings, batched_warnings = [], []
    one = evaluate.model_predictions(network, cfg, items, one_warnings, progress=False,
                                     chunk_size=1, workers=0)
    batched = evaluate.model_predictions(network, cfg, items, batched_warnings, progress=False,
                                         chunk_size=4, workers=1)
    assert [entry["image_id"] for entry in batched] == [f"img{index}" for index in range(5)]
    assert sum(len(entry["keypoint_annotations"]) for entry in one) > 0  # people to compare
    assert batched == one
    assert batched_warnings == one_warnings == ["gone: no image file found; skipped (counts "
                                                "as missing)."]


# ------------------------------------------------------------------------------ bad submissions
@pytest.mark.parametrize("reference, expected", [
    # Every image missing: each adds its boxes to the denominator (4 people) and scores zeros,
    # as the official evaluator does.
    (REFERENCE_SMALL, {"score": 0.0, "missing_images": 3, "denominator": 4, "num_pred": 0}),
    # Nothing on either side: score 0 (the official would divide 0 by 0).
    (None, {"score": 0.0, "missing_images": 0, "denominator": 0, "num_pred": 0}),
])
def test_an_empty_submission_scores_zero(tmp_path, capsys, reference, expected):
    (tmp_path / "empty.json").write_text("[]")
    if reference is None:
        reference = str(tmp_path / "empty.json")
    status = evaluate.main(["--submit", str(tmp_path / "empty.json"), "--ref", reference,
                            "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and {key: result[key] for key in expected} == expected
    if expected["missing_images"]:
        assert result["warnings"] == [f"img_{name} is not in the prediction JSON file."
                                      for name in "abc"]
    else:
        assert result["warnings"] == ["nothing to score: no ground-truth or predicted people; "
                                      "score 0."]


@pytest.mark.parametrize("content, message", [
    ("", "the predictions file is empty"),
    ("[" + ",".join(["1"] * 1000) + "]", "the predictions are a list of 1000 entries and none "
     "is an {image_id, keypoint_annotations} object (entry 0 is of type int)"),
    (json.dumps([ladder(10, 10)] * 3), "the predictions are a list of 3 entries and none is an "
     "{image_id, keypoint_annotations} object (entry 0 is of type list)"),
])
def test_a_submission_that_is_no_submission_is_refused_in_one_line(tmp_path, capsys, content,
                                                                   message):
    path = tmp_path / "pred.json"
    path.write_text(content)
    status = evaluate.main(["--submit", str(path), "--ref", REFERENCE_SMALL])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith(f"{message}\n")


def test_a_submission_with_a_byte_order_mark_is_read(tmp_path, capsys):
    path = tmp_path / "pred.json"
    with open(PREDICTIONS_SMALL, encoding="utf-8") as handle:
        path.write_bytes(b"\xef\xbb\xbf" + handle.read().encode("utf-8"))
    assert evaluate.main(["--submit", str(path), "--ref", REFERENCE_SMALL]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "Score: 0.60000000"


def write_big_submission(path, images):
    """A submission of `images` entries of 3 people with sub-pixel coordinates (about 830
    bytes each), written from a text template: json.dumps would take longer than scoring."""
    def person(x0, fraction):
        return ", ".join(f"{x0 + 10 * (k % 2)}.{fraction}, {10 + 10 * (k // 2)}.{fraction}, 1"
                         for k in range(14))
    people = ", ".join(f'"human{n + 1}": [{person(10 + 100 * n, 25 + 25 * n)}]'
                       for n in range(3))
    entry = '{"image_id": "%08d", "keypoint_annotations": {' + people.replace("%", "%%") + "}}"
    path.write_text("[" + ",\n".join(entry % index for index in range(images)) + "]")


def test_a_50_mb_submission_is_scored_in_seconds(tmp_path, capsys):
    import time

    submission, reference = tmp_path / "pred.json", tmp_path / "ref.json"
    write_big_submission(submission, 60_000)
    assert submission.stat().st_size > 49_000_000
    # The reference holds 2,000 of the images (one person each, near the prediction's first):
    # the other 58,000 entries are read, checked and ignored. Scoring all 60,000 against a
    # reference of the same size took about 6 s on a 2-core machine, 3.4 s of it JSON decoding.
    reference.write_text(json.dumps([record(f"{index:08d}", {"human1": (ladder(10, 10),
                                                                         [0, 0, 40, 90])})
                                     for index in range(2000)]))
    started = time.perf_counter()
    status = evaluate.main(["--submit", str(submission), "--ref", str(reference), "--json"])
    elapsed = time.perf_counter() - started
    result = json.loads(capsys.readouterr().out)
    assert status == 0
    assert elapsed < 30  # about 3 s on a 2-core machine: a generous bound, not a benchmark
    # Each image: its person found at every threshold, denominator max(1, 3) = 3.
    assert result["score"] == pytest.approx(1 / 3) and result["num_pred"] == 6000
    assert result["warnings"] == ["58000 predicted image(s) are not in the reference and were "
                                  "ignored (first: 00002000)."]
