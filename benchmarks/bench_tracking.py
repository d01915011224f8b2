"""Tracking and smoothing of a model on a synthetic video: id switches, jitter, frames per second.

    python benchmarks/bench_tracking.py --model models/quickstart/best.keras   # or .onnx, .tflite

A video of synthetic people (synthetic.walking_people: still poses translated across a cluttered
background; a pair of them crossing in the "crossing" case) is drawn in memory, the model finds
people in every frame (demo.py's path: inference.estimate_poses_stream with the model's config),
tracking.Tracker gives ids, and each found person is paired with a true person by OKS (the
metric's constants, Hungarian, OKS > 0.5). Printed per case: id switches (tracking.id_switches),
true people found per frame, the mean error of the found joints against the truth in pixels,
and jitter (the mean size of the second difference of a joint's position from frame to frame,
which is 0 for the truth's constant-speed motion), raw and One-Euro smoothed; and the frames per
second of the whole path (network, parsing, tracking). The last line is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import aic_metric  # noqa: E402
import inference  # noqa: E402
import runtimes  # noqa: E402
import synthetic  # noqa: E402
import tracking  # noqa: E402

QUICKSTART = os.path.join("models", "quickstart", "best.keras")
FRAME = (360, 640)  # rows, columns
FPS = 25.0
# (name, neck starts (x, y), steps per frame (x, y)) of each case; people 200 px tall.
CASES = (
    ("side by side", [(110, 70), (320, 80), (530, 70)], [(2.0, 0.0), (2.0, 0.3), (2.0, 0.0)]),
    ("crossing", [(150, 70), (490, 85)], [(4.0, 0.0), (-4.0, 0.0)]),
)
HEIGHT = 200.0


def metric_similarity(truth, found):
    """The metric's OKS of every (true person, found person): (T, F), over the true person's
    joints, a joint the found person misses counting 0; area of the true person's box."""
    truth, found = np.asarray(truth, np.float64), np.asarray(found, np.float64)
    extent = truth[:, :, :2].max(axis=1) - truth[:, :, :2].min(axis=1)
    area = extent[:, 0] * extent[:, 1]
    true_index, found_index = (index.ravel() for index in np.indices((len(truth), len(found))))
    terms = aic_metric.keypoint_terms(truth[true_index], area[true_index] + 1.0,
                                      found[found_index, :, :2])
    terms = terms.reshape(len(truth), len(found), -1)
    return (terms * (found[None, :, :, 2] > 0)).mean(axis=2)


def true_pairs(found, truth):
    """{true person index: found person index} paired by the metric's OKS > 0.5."""
    from scipy.optimize import linear_sum_assignment

    if not len(found):
        return {}
    similarity = metric_similarity(truth, found)
    rows, columns = linear_sum_assignment(similarity, maximize=True)
    return {int(row): int(column) for row, column in zip(rows, columns)
            if similarity[row, column] > 0.5}


def jitter(positions):
    """Mean |second difference| (pixels) of per-frame joint positions {key: [(frame, xy)]}."""
    values = []
    for track in positions.values():
        for (f0, a), (f1, b), (f2, c) in zip(track, track[1:], track[2:]):
            if f2 - f0 == 2:
                found = (a[:, 2] > 0) & (b[:, 2] > 0) & (c[:, 2] > 0)
                values += np.hypot(*(a[found, :2] - 2 * b[found, :2] + c[found, :2]).T).tolist()
    return float(np.mean(values)) if values else float("nan")


def run_case(network, cfg, case, frames):
    """The figures of one case (a dict)."""
    name, starts, steps = case
    sequence = synthetic.walking_people(frames, starts, steps, HEIGHT, seed=5)
    images = synthetic.video_frames(sequence, FRAME, seed=6)
    items = ((index, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)) for index, image in
             enumerate(images))
    tracker, assignments, found_counts = tracking.Tracker(cfg), [], []
    raw, smooth, errors = {}, {}, {"raw": [], "smoothed": []}
    started = time.perf_counter()
    for index, estimate in inference.estimate_poses_stream(network, items, cfg):
        ids, smoothed = tracker.update(estimate.people, index / FPS)
        pairs = true_pairs(estimate.people, sequence[index])
        assignments.append({true: int(ids[found]) for true, found in pairs.items()})
        found_counts.append(len(pairs))
        for true, found in pairs.items():
            raw.setdefault(true, []).append((index, estimate.people[found]))
            smooth.setdefault(true, []).append((index, smoothed[found]))
            for kind, person in (("raw", estimate.people[found]), ("smoothed", smoothed[found])):
                present = person[:, 2] > 0
                errors[kind] += np.hypot(*(person[present, :2]
                                           - sequence[index][true, present, :2]).T).tolist()
    seconds = time.perf_counter() - started
    return {"case": name, "frames": frames, "people": len(starts),
            "id_switches": tracking.id_switches(assignments),
            "ids_given": tracker.next_id - 1,
            "found_per_frame": round(float(np.mean(found_counts)), 3),
            "error_px_raw": round(float(np.mean(errors["raw"])), 3),
            "error_px_smoothed": round(float(np.mean(errors["smoothed"])), 3),
            "jitter_px_raw": round(jitter(raw), 3), "jitter_px_smoothed": round(jitter(smooth), 3),
            "frames_per_second": round(frames / seconds, 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=QUICKSTART, help=f"any model (default {QUICKSTART})")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="runtime threads (0: every core)")
    args = parser.parse_args(argv)
    network, cfg = runtimes.load(args.model, args.threads)
    cfg = dataclasses.replace(cfg, temporal_smoothing=True)
    load_before = [round(value, 2) for value in os.getloadavg()]
    results = []
    for case in CASES:
        result = run_case(network, cfg, case, args.frames)
        print(" ".join(f"{key} {value}" for key, value in result.items()), flush=True)
        results.append(result)
    print(json.dumps({"model": args.model, "frame": list(FRAME), "scales": list(cfg.scales),
                      "flip_test": cfg.flip_test, "load_average_before": load_before,
                      "load_average_after": [round(v, 2) for v in os.getloadavg()],
                      "cases": results}))


if __name__ == "__main__":
    main()
