"""Check the official-score match on the shared sample and time a validation-sized evaluation.

    python benchmarks/bench_evaluate.py [--images 30000] [--repeats 3]

1. Scores ../shared/data/aic_keypoint_predictions_sample.json against
   aic_keypoint_annotations_sample.json (488 images, 1,342 people); the challenge's evaluator
   gives 0.99552906, and the printed score must be the same to the last digit.
2. Builds a synthetic validation-sized set (default 30,000 images, the size of the AI
   Challenger validation split) by replicating the sample's annotation records under new
   image_ids, with predictions perturbed by Gaussian noise, 1% of images left out and 5% given
   an extra spurious person. The files are written to a temporary folder and scored through
   the same path as `evaluate.py --submit` (JSON loading + aic_map); the best of --repeats runs
   is reported.

The last line is JSON: score, expected, match, seconds (load + score of the synthetic set),
plus the parts and the synthetic set's size and score.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aic_metric  # noqa: E402
import utils  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data")
SAMPLE_REFERENCE = os.path.join(SHARED, "aic_keypoint_annotations_sample.json")
SAMPLE_PREDICTIONS = os.path.join(SHARED, "aic_keypoint_predictions_sample.json")
EXPECTED = "0.99552906"


def synthetic_set(references, images, seed=0, noise=3.0):
    """(predictions, references) of `images` images made from copies of `references`."""
    rng = np.random.default_rng(seed)
    new_references, predictions = [], []
    for index in range(images):
        source = references[index % len(references)]
        image_id = f"synthetic{index:06d}"
        reference = copy.deepcopy(source)
        reference["image_id"] = image_id
        new_references.append(reference)
        if rng.random() < 0.01:
            continue
        people = {}
        for name, values in source["keypoint_annotations"].items():
            keypoints = np.asarray(values, dtype=np.float64).reshape(14, 3)
            keypoints[:, :2] += rng.normal(0.0, noise, size=(14, 2))
            keypoints[:, 2] = 1
            people[name] = np.round(keypoints).astype(int).reshape(-1).tolist()
        if rng.random() < 0.05:
            people["spurious"] = rng.integers(0, 1000, size=42).tolist()
        predictions.append({"image_id": image_id + ".jpg", "keypoint_annotations": people})
    return predictions, new_references


def time_files(prediction_path, reference_path, repeats):
    """Best-of-`repeats` (load seconds, score seconds) and the result of the last run."""
    best_load, best_score, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        predictions = aic_metric.load_json_list(prediction_path, "predictions")
        references = aic_metric.load_json_list(reference_path, "reference")
        loaded = time.perf_counter()
        result = aic_metric.aic_map(predictions, references)
        scored = time.perf_counter()
        best_load = min(best_load, loaded - started)
        best_score = min(best_score, scored - loaded)
    return best_load, best_score, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30000, help="synthetic set size")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is kept)")
    args = parser.parse_args(argv)

    sample = aic_metric.aic_map(aic_metric.load_json_list(SAMPLE_PREDICTIONS, "predictions"),
                              aic_metric.load_json_list(SAMPLE_REFERENCE, "reference"))
    score_text = "%.8f" % sample["score"]
    print(f"sample: Score: {score_text} (official evaluator: {EXPECTED})")

    references = aic_metric.load_json_list(SAMPLE_REFERENCE, "reference")
    predictions, synthetic_references = synthetic_set(references, args.images)
    with tempfile.TemporaryDirectory() as folder:
        prediction_path = os.path.join(folder, "predictions.json")
        reference_path = os.path.join(folder, "references.json")
        utils.atomic_write_json(prediction_path, predictions)
        utils.atomic_write_json(reference_path, synthetic_references)
        load_seconds, score_seconds, result = time_files(prediction_path, reference_path,
                                                         args.repeats)
    print(f"synthetic: {result['num_images']} images, {result['num_gt']} people, "
          f"{result['num_pred']} predicted; score {result['score']:.8f}; "
          f"load {load_seconds:.2f} s + score {score_seconds:.2f} s")
    print(json.dumps({
        "score": float(score_text), "expected": float(EXPECTED), "match": score_text == EXPECTED,
        "seconds": round(load_seconds + score_seconds, 3),
        "load_seconds": round(load_seconds, 3), "score_seconds": round(score_seconds, 3),
        "synthetic_images": result["num_images"], "synthetic_people": result["num_gt"],
        "synthetic_predicted": result["num_pred"], "synthetic_score": result["score"],
    }))
    return 0 if score_text == EXPECTED else 1


if __name__ == "__main__":
    sys.exit(main())
