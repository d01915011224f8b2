"""Compare aic_metric with the challenge's own evaluator, run under Python 2, case by case.

    python benchmarks/check_official.py --official PATH/keypoint_eval.py [--python2 python2]
    python benchmarks/check_official.py --no-official     # only the project's scores

The official evaluator (AIChallenger/AI_Challenger_2017, Evaluation/keypoint_eval/
keypoint_eval.py) is a Python 2 script that needs NumPy; it is not part of this project. Get it
from the challenge's repository and a Python 2.7 with NumPy (for example pyenv's 2.7.18 and
``python2 -m pip install numpy==1.16.6``), then pass both. Against
../shared/data/aic_keypoint_annotations_sample.json (488 images, 1,342 people) it scores:

- the shared sample submission (integer coordinates);
- noisy copies of the annotations (Gaussian noise of --noise pixels per coordinate, fixed
  seed), written as integers (rounded) and as floats: integer predictions are floor-divided
  by the official, float ones are not; "python3_semantics" is the score of the integer file
  with every number turned into a float (what a Python 3 port without the floor gives);
- the integer file with float confidences (third values): NumPy then types the arrays float;
- duplicates: every tenth image also gets a far-off entry, written with or without an
  extension, before or after its good entry (each image keeps an entry without an extension,
  on which the official does not crash).

Each line prints the project's score and the official's (``%.8f``) and whether they are equal;
the last line is JSON with every case. Exit status 1 when any case differs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aic_metric  # noqa: E402
import utils  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data")
SAMPLE_REFERENCE = os.path.join(SHARED, "aic_keypoint_annotations_sample.json")
SAMPLE_PREDICTIONS = os.path.join(SHARED, "aic_keypoint_predictions_sample.json")


def noisy_predictions(references, noise, seed, integer):
    """One predicted person per annotated one: its 14 keypoints plus Gaussian noise (pixels),
    v = 1; coordinates rounded to Python ints when `integer`, floats otherwise."""
    rng = np.random.default_rng(seed)
    predictions = []
    for record in references:
        people = {}
        for name, values in record["keypoint_annotations"].items():
            keypoints = np.asarray(values, dtype=np.float64).reshape(-1, 3)
            keypoints[:, :2] += rng.normal(0.0, noise, size=(len(keypoints), 2))
            keypoints[:, 2] = 1
            flat = keypoints.reshape(-1)
            people[name] = np.rint(flat).astype(int).tolist() if integer else \
                [round(float(value), 3) for value in flat]
        predictions.append({"image_id": record["image_id"], "keypoint_annotations": people})
    return predictions


def as_floats(predictions):
    """The same predictions with every number a float (true division everywhere)."""
    floated = copy.deepcopy(predictions)
    for entry in floated:
        for name, values in entry["keypoint_annotations"].items():
            entry["keypoint_annotations"][name] = [float(value) for value in values]
    return floated


def with_float_confidences(predictions):
    changed = copy.deepcopy(predictions)
    for entry in changed:
        for values in entry["keypoint_annotations"].values():
            values[2::3] = [0.9] * (len(values) // 3)
    return changed


def with_duplicates(predictions):
    """Every tenth image gets a far-off extra entry; the four orders/extension mixes rotate.

    Cases: far entry after the good one (the far one counts), far one before (the good one
    counts), far "ID.jpg" after the good "ID" (the good one counts: found without an
    extension), good "ID.jpg" before a far "ID" (the far one counts).
    """
    result = []
    for index, entry in enumerate(predictions):
        if index % 10:
            result.append(entry)
            continue
        far = {"image_id": entry["image_id"], "keypoint_annotations": {
            name: [value + 500 for value in values]
            for name, values in entry["keypoint_annotations"].items()}}
        case = (index // 10) % 4
        if case == 0:
            result += [entry, far]
        elif case == 1:
            result += [far, entry]
        elif case == 2:
            result += [entry, dict(far, image_id=far["image_id"] + ".jpg")]
        else:
            result += [dict(entry, image_id=entry["image_id"] + ".jpg"), far]
    return result


def official_score(python2, script, prediction_path, reference_path):
    """The official evaluator's 'Score:' as a string, or the reason it gave none."""
    completed = subprocess.run([*python2.split(), script, "--submit", prediction_path,
                                "--ref", reference_path], capture_output=True, text=True,
                               timeout=600)
    for line in completed.stdout.splitlines():
        if line.startswith("Score:"):
            return line.split()[-1]
    return "failed: " + (completed.stderr.strip().splitlines() or ["no output"])[-1]


def cases(references, noise, seed):
    integer = noisy_predictions(references, noise, seed, integer=True)
    return {
        "sample_submission": aic_metric.load_json_list(SAMPLE_PREDICTIONS, "predictions"),
        "integer_noisy": integer,
        "python3_semantics": as_floats(integer),
        "float_noisy": noisy_predictions(references, noise, seed, integer=False),
        "integer_with_float_confidences": with_float_confidences(integer),
        "integer_with_duplicates": with_duplicates(integer),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", metavar="keypoint_eval.py",
                        help="the challenge's evaluator script (Python 2)")
    parser.add_argument("--python2", default="python2",
                        help="command that runs Python 2 with NumPy (default: python2)")
    parser.add_argument("--no-official", "--no_official", action="store_true",
                        help="print only the project's scores")
    parser.add_argument("--ref", default=SAMPLE_REFERENCE, help="annotation JSON")
    parser.add_argument("--noise", type=float, default=2.0, help="noise sigma in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.no_official and not (args.official and os.path.isfile(args.official)):
        parser.error("pass --official PATH/keypoint_eval.py (or --no-official)")
    references = aic_metric.load_json_list(args.ref, "reference")
    rows, all_equal = {}, True
    with tempfile.TemporaryDirectory() as folder:
        for name, predictions in cases(references, args.noise, args.seed).items():
            path = os.path.join(folder, name + ".json")
            utils.atomic_write_json(path, predictions)
            ours = "%.8f" % aic_metric.aic_map(predictions, references)["score"]
            theirs = None if args.no_official else official_score(args.python2, args.official,
                                                                  path, args.ref)
            equal = theirs is None or ours == theirs
            all_equal &= equal
            rows[name] = {"project": ours, "official": theirs, "equal": equal}
            print(f"{name:32s} project {ours}   official {theirs}   "
                  f"{'equal' if equal else 'DIFFERENT'}")
    print(json.dumps({"noise": args.noise, "seed": args.seed, "all_equal": all_equal,
                      "cases": rows}))
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
