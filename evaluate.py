"""Score AI Challenger keypoint predictions with the challenge's official mAP, and make them.

    python evaluate.py --submit PRED.json --ref ANNOTATIONS.json [--json] [--json_out S.json]
    python evaluate.py --model models/cpu/best.keras --images DIR [--ref ANNOTATIONS.json]
                       [--out PRED.json] [--limit N] [config options]
    python evaluate.py --oracle --ref ANNOTATIONS.json [--out PRED.json] [--limit N] [--preset cpu]

The metric is the one the challenge's published evaluator computes, quirks included, so that the
score printed on the last line (``Score: %.8f``) is the same number to the last digit:

- Only ground-truth keypoints with v == 1 count. With delta_k = 2 * AIC_OKS_SIGMAS[k] and
  s = float32((y2 - y1) * (x2 - x1)) of the person's box, OKS(gt, pred) is the mean over the
  counted keypoints of exp(-d^2 / 2 / delta_k^2 / (s + 1)); a person with no counted keypoint
  has OKS 0. The mean is summed in the same order as NumPy sums the official's 1-D array, so
  every OKS is bit-identical to the official one.
- Every ground-truth person keeps its best OKS over the image's predicted people (no one-to-one
  assignment), and the image adds max(#gt people, #predicted people) to the denominator. An
  image absent from the predictions adds its number of boxes to the denominator and zeros.
- Score = mean over t in 0.50, 0.55, ..., 0.95 of count(best OKS > t) / float32(denominator).
- Prediction image_ids are cut at the first '.'; entries without image_id or
  keypoint_annotations are skipped with a warning; of duplicate ids the first entry counts.
  The third number of each predicted keypoint (a confidence) is ignored.

Beyond the official script, malformed predictions (a keypoint list that is not 42 numbers, x or y
not a finite number, keypoint_annotations not an object, image_id not a string) are reported
with a warning naming the image and person, and count as no prediction. A malformed reference
(the ground truth itself) is an error naming the record, because skipping it would silently
change the denominator. Unreadable files and malformed references exit with status 2 and a
one-line error on stderr.

Extra diagnostics (printed as a table before the score, and returned by ``aic_map``): AP at OKS
0.5 and 0.75; missed people (ground-truth people whose best OKS is <= 0.5), spurious people
(predicted people that are the best match of no ground-truth person with OKS > 0.5), and a
PCK-style per-keypoint accuracy: among ground-truth people found with OKS > 0.5, the fraction
of their counted (v == 1) keypoints whose own OKS term exp(-d^2 / 2 / delta_k^2 / (s + 1)),
measured against the person's best match, is above 0.5.

With ``--json`` the only thing on stdout is one line of JSON (warnings included in it), so the
whole output parses; without it, warnings, the table and finally ``Score: %.8f`` are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

import config
import utils
from config import AIC_OKS_SIGMAS, JOINT_NAMES, NUM_JOINTS

# The official evaluator doubles the published sigmas.
OKS_DELTAS = 2.0 * np.asarray(AIC_OKS_SIGMAS, dtype=np.float64)
OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)
# A ground-truth person counts as found when its best OKS is above this (AP@0.5's criterion).
MATCH_THRESHOLD = 0.5
# Pairs of (gt person, predicted person) scored at once; bounds memory for huge submissions.
MAX_PAIRS_PER_CHUNK = 1 << 20
# Exact types accepted as numbers: JSON gives int and float; NumPy scalars come from callers that
# pass predictions made in memory. bool (a subclass of int) is deliberately not among them.
NUMBER_TYPES = frozenset((int, float, np.int32, np.int64, np.float32, np.float64))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
EXIT_INPUT_ERROR = 2
# The oracle's canvas, when the image size is unknown, is the annotations' extent plus this
# fraction (and a few pixels), so that people touching the extent are not cut by the border.
ORACLE_MARGIN_FRACTION = 0.05
ORACLE_MARGIN_PIXELS = 8


class InputError(ValueError):
    """An unreadable file or a malformed reference; the message names the file or record."""


# --------------------------------------------------------------------------------------------
# Parsing references and predictions into flat arrays.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GroundTruth:
    """All ground-truth people of the reference, flattened in reference order.

    keypoints (G, 14, 3) float64 (x, y, v); area_plus_one (G,) float32 (s + 1 as the official
    computes it); image_of_person (G,) int; people_per_image (I,) int, the number of
    keypoint_annotations; boxes_per_image (I,) int, the number of human_annotations (what the
    official adds for an image absent from the predictions); counted (G, 14) bool (v == 1).
    """

    image_ids: list
    keypoints: np.ndarray
    area_plus_one: np.ndarray
    image_of_person: np.ndarray
    people_per_image: np.ndarray
    boxes_per_image: np.ndarray
    counted: np.ndarray


@dataclasses.dataclass
class Submission:
    """The valid predicted people of the reference's images, grouped by reference image.

    keypoints (P, 14, 2) float64 (x, y); people of image i are rows
    offsets[i]:offsets[i] + people_per_image[i]; present (I,) bool says whether the image had
    an entry at all (an absent image scores zeros with a warning).
    """

    keypoints: np.ndarray
    offsets: np.ndarray
    people_per_image: np.ndarray
    present: np.ndarray


def _is_number_list(values, length):
    """True for a list (or tuple) of `length` numbers (bools and strings excluded)."""
    return (type(values) in (list, tuple) and len(values) == length
            and set(map(type, values)) <= NUMBER_TYPES)


def _reference_record(index, record):
    """Validate one reference record.

    Returns (image_id, names, keypoint lists, boxes in names' order, number of boxes).
    """
    where = f"reference record {index}"
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object, got {type(record).__name__}")
    image_id = record.get("image_id")
    if not isinstance(image_id, str):
        raise InputError(f"{where}: missing or non-string 'image_id'")
    where = f"reference record {index} ({image_id})"
    keypoints, boxes = record.get("keypoint_annotations"), record.get("human_annotations")
    if not isinstance(keypoints, dict) or not isinstance(boxes, dict):
        raise InputError(f"{where}: 'keypoint_annotations' and 'human_annotations' must be "
                         "objects")
    names = list(keypoints)
    for name in names:
        if not _is_number_list(keypoints[name], 3 * NUM_JOINTS):
            raise InputError(f"{where} {name}: keypoints must be {3 * NUM_JOINTS} numbers")
        if not _is_number_list(boxes.get(name), 4):
            raise InputError(f"{where} {name}: needs a human_annotations box of 4 numbers")
    return image_id, names, [keypoints[name] for name in names], \
        [boxes[name] for name in names], len(boxes)


def float_rows(rows, width):
    """Stack lists of numbers into a float64 (N, width) array; rows too large become inf."""
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), width)
    except OverflowError:
        # A Python int beyond float64's range; mark its row non-finite rather than fail.
        return np.array([[math.inf] * width if _overflows(row) else row for row in rows],
                        dtype=np.float64).reshape(len(rows), width)


def _overflows(row):
    try:
        np.array(row, dtype=np.float64)
        return False
    except OverflowError:
        return True


def _finite_array(rows, width, where_of_row):
    """float_rows, raising InputError naming the first row with a non-finite number."""
    array = float_rows(rows, width)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise InputError(f"{where_of_row(int(np.argmax(bad)))}: numbers must be finite")
    return array


def parse_references(references):
    """Validate and flatten the reference (list of AIC annotation dicts) into a GroundTruth.

    Raises InputError naming the record for anything malformed, or for a duplicate image_id.
    """
    if not isinstance(references, list):
        raise InputError("the reference must be a JSON list of annotation records")
    image_ids, seen, where = [], set(), []
    keypoint_rows, box_rows, people, boxes_count = [], [], [], []
    for index, record in enumerate(references):
        image_id, names, keypoints, boxes, box_count = _reference_record(index, record)
        if image_id in seen:
            raise InputError(f"reference record {index} ({image_id}): duplicate image_id")
        seen.add(image_id)
        image_ids.append(image_id)
        keypoint_rows += keypoints
        box_rows += boxes
        where += [f"reference record {index} ({image_id}) {name}" for name in names]
        people.append(len(names))
        boxes_count.append(box_count)
    keypoints = _finite_array(keypoint_rows, 3 * NUM_JOINTS, where.__getitem__)
    boxes = _finite_array(box_rows, 4, where.__getitem__)
    # The official computes the area in Python (exact for integer boxes) and rounds it once to
    # float32; float64 products of these integers are exact too, so one rounding happens here.
    area = ((boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])).astype(np.float32)
    keypoints = keypoints.reshape(-1, NUM_JOINTS, 3)
    people = np.asarray(people, dtype=np.int64)
    return GroundTruth(
        image_ids=image_ids, keypoints=keypoints, area_plus_one=area + np.float32(1),
        image_of_person=np.repeat(np.arange(len(image_ids)), people),
        people_per_image=people, boxes_per_image=np.asarray(boxes_count, dtype=np.int64),
        counted=keypoints[:, :, 2] == 1)


def _prediction_entries(predictions, warnings):
    """Yield (image_id, keypoint_annotations) of the usable entries, first of duplicates only."""
    seen = set()
    for index, entry in enumerate(predictions):
        if not isinstance(entry, dict):
            warnings.append(f"prediction entry {index} is not an object; skipped.")
            continue
        if "image_id" not in entry:
            warnings.append(f"prediction entry {index} has no key 'image_id'; skipped.")
            continue
        raw_id = entry["image_id"]
        if not isinstance(raw_id, str):
            warnings.append(f"prediction entry {index}: image_id {raw_id!r} is not a string; "
                            "skipped.")
            continue
        if "keypoint_annotations" not in entry:
            warnings.append(f"{raw_id} does not have key 'keypoint_annotations'; skipped.")
            continue
        image_id = raw_id.split(".")[0]
        if image_id in seen:
            warnings.append(f"{raw_id} is duplicated in prediction JSON file; the first entry "
                            "counts.")
            continue
        seen.add(image_id)
        yield image_id, entry["keypoint_annotations"]


def _predicted_xy(image_id, name, values, warnings):
    """The 28 numbers x0, y0, x1, y1, ... of one predicted person, or None (with a warning)."""
    if _is_number_list(values, 3 * NUM_JOINTS):
        return values
    if type(values) in (list, tuple) and len(values) == 3 * NUM_JOINTS:
        # Only x and y must be numbers: the third value is a confidence the metric ignores.
        xy = list(values[0::3]) + list(values[1::3])
        if set(map(type, xy)) <= NUMBER_TYPES:
            return [0 if position % 3 == 2 else value for position, value in enumerate(values)]
        problem = "has an x or y that is not a number"
    elif isinstance(values, (list, tuple)):
        problem = f"has {len(values)} values instead of {3 * NUM_JOINTS}"
    else:
        problem = f"is a {type(values).__name__}, not a list of {3 * NUM_JOINTS} numbers"
    warnings.append(f"{image_id} {name}: predicted keypoints {problem}; counted as no "
                    "prediction.")
    return None


def _collect_predictions(predictions, image_index, warnings):
    """Gather the valid people per reference image: (rows, owners, names, present, unknown)."""
    rows, owners, names = [], [], []
    present = np.zeros(len(image_index), dtype=bool)
    unknown = []
    for image_id, people in _prediction_entries(predictions, warnings):
        image = image_index.get(image_id)
        if image is None:
            unknown.append(image_id)
            continue
        present[image] = True
        if not isinstance(people, dict):
            warnings.append(f"{image_id}: 'keypoint_annotations' is not an object; the image "
                            "counts as having no predicted people.")
            continue
        for name, values in people.items():
            row = _predicted_xy(image_id, name, values, warnings)
            if row is not None:
                rows.append(row)
                owners.append(image)
                names.append(f"{image_id} {name}")
    return rows, owners, names, present, unknown


def _finite_predictions(rows, owners, names, warnings):
    """(P, 14, 2) float64 keypoints and owners of the rows whose x and y are all finite."""
    xy = float_rows(rows, 3 * NUM_JOINTS).reshape(-1, NUM_JOINTS, 3)[:, :, :2]
    finite = np.isfinite(xy).all(axis=(1, 2))
    for bad in np.flatnonzero(~finite):
        warnings.append(f"{names[bad]}: predicted keypoints include a non-finite x or y "
                        "(NaN, infinity or too large); counted as no prediction.")
    return np.ascontiguousarray(xy[finite]), np.asarray(owners, dtype=np.int64)[finite]


def parse_predictions(predictions, image_ids, warnings):
    """Validate the predictions against the reference's image_ids; return a Submission.

    Malformed entries and people are dropped with a warning appended to `warnings`.
    """
    if not isinstance(predictions, list):
        raise InputError("the predictions must be a JSON list of {image_id, "
                         "keypoint_annotations} objects")
    image_index = {image_id: index for index, image_id in enumerate(image_ids)}
    rows, owners, names, present, unknown = _collect_predictions(predictions, image_index,
                                                                 warnings)
    keypoints, owners = _finite_predictions(rows, owners, names, warnings)
    if unknown:
        warnings.append(f"{len(unknown)} predicted image(s) are not in the reference and were "
                        f"ignored (first: {unknown[0]}).")
    # Predicted people are grouped by reference image (a stable sort keeps their order).
    order = np.argsort(owners, kind="stable")
    people = np.bincount(owners, minlength=len(image_ids)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(people)[:-1]]).astype(np.int64)
    return Submission(keypoints=keypoints[order], offsets=offsets, people_per_image=people,
                      present=present)


# --------------------------------------------------------------------------------------------
# OKS of every (ground-truth person, predicted person) pair of an image.
# --------------------------------------------------------------------------------------------
def keypoint_terms(gt_keypoints, area_plus_one, pred_xy):
    """Per-keypoint OKS terms exp(-d^2 / 2 / delta_k^2 / (s + 1)), shape (N, 14) float64.

    gt_keypoints (N, 14, >=2) and pred_xy (N, 14, 2) hold (x, y) in image pixels;
    area_plus_one (N,) float32. The operations run in the official's order so that every term
    is bit-identical to it.
    """
    difference = gt_keypoints[:, :, :2] - pred_xy
    squared = difference[:, :, 0] ** 2 + difference[:, :, 1] ** 2
    # An inverted box (area <= -1) gives the official's odd values (inf, NaN) without noise.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return np.exp(-squared / 2 / OKS_DELTAS ** 2 / area_plus_one[:, None])


def official_mean(terms, counted):
    """Mean over the counted entries of each row, summed exactly as NumPy sums the 1-D array.

    terms (N, 14) float64, counted (N, 14) bool; rows with nothing counted give 0. NumPy's
    pairwise sum adds fewer than 8 numbers one by one, and 8 to 14 numbers as a fixed tree of
    the first 8 followed by the rest one by one; summing the counted values in that order
    makes the result bit-identical to np.mean(terms[row][counted[row]]).
    """
    count = counted.sum(axis=1)
    # Move each row's counted values to the front (in their order) and zero the rest.
    order = np.argsort(~counted, axis=1, kind="stable")
    packed = np.where(np.arange(NUM_JOINTS) < count[:, None],
                      np.take_along_axis(terms, order, axis=1), 0.0)
    one_by_one = np.cumsum(packed, axis=1)[:, -1]
    tree = ((packed[:, 0] + packed[:, 1]) + (packed[:, 2] + packed[:, 3])) + \
        ((packed[:, 4] + packed[:, 5]) + (packed[:, 6] + packed[:, 7]))
    for column in range(8, NUM_JOINTS):
        tree = tree + packed[:, column]
    total = np.where(count < 8, one_by_one, tree)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _pairs_of_chunk(gt, submission, first, last):
    """Pair every gt person in [first, last) with each predicted person of its image.

    Returns (gt_index, pred_index, pairs_per_person) with pairs ordered by gt person.
    """
    images = gt.image_of_person[first:last]
    pairs_per_person = submission.people_per_image[images]
    total = int(pairs_per_person.sum())
    starts = np.cumsum(pairs_per_person) - pairs_per_person
    gt_index = np.repeat(np.arange(first, last), pairs_per_person)
    within = np.arange(total) - np.repeat(starts, pairs_per_person)
    pred_index = np.repeat(submission.offsets[images], pairs_per_person) + within
    return gt_index, pred_index, pairs_per_person


def _best_of_chunk(gt, submission, first, last, best_oks, best_pred):
    """Fill best_oks/best_pred for gt people [first, last): max OKS and its first argmax."""
    gt_index, pred_index, pairs_per_person = _pairs_of_chunk(gt, submission, first, last)
    if len(gt_index) == 0:
        return
    terms = keypoint_terms(gt.keypoints[gt_index], gt.area_plus_one[gt_index],
                           submission.keypoints[pred_index])
    oks = official_mean(terms, gt.counted[gt_index])
    has_pairs = pairs_per_person > 0
    starts = (np.cumsum(pairs_per_person) - pairs_per_person)[has_pairs]
    best = np.maximum.reduceat(oks, starts)
    is_best = oks == np.repeat(best, pairs_per_person[has_pairs])
    first_best = np.minimum.reduceat(np.where(is_best, np.arange(len(oks)), len(oks)), starts)
    # A NaN OKS (only from a reference box of area exactly -1) matches nothing; take the first.
    first_best = np.where(first_best == len(oks), starts, first_best)
    people = np.arange(first, last)[has_pairs]
    best_oks[people] = best
    best_pred[people] = pred_index[first_best]


def best_matches(gt, submission):
    """Each gt person's best OKS over its image's predicted people, and which one it was.

    Returns best_oks (G,) float64 (0 where the image has no predicted people) and best_pred
    (G,) int (row in submission.keypoints, -1 where there is none). Work goes in chunks of at
    most MAX_PAIRS_PER_CHUNK pairs (or one person's pairs) to bound memory.
    """
    count = len(gt.image_of_person)
    best_oks = np.zeros(count, dtype=np.float64)
    best_pred = np.full(count, -1, dtype=np.int64)
    cumulative = np.cumsum(submission.people_per_image[gt.image_of_person])
    first = 0
    while first < count:
        done = cumulative[first - 1] if first else 0
        last = int(np.searchsorted(cumulative, done + MAX_PAIRS_PER_CHUNK, side="right"))
        last = max(last, first + 1)
        _best_of_chunk(gt, submission, first, last, best_oks, best_pred)
        first = last
    return best_oks, best_pred


# --------------------------------------------------------------------------------------------
# The score and the diagnostics.
# --------------------------------------------------------------------------------------------
def official_score(best_oks, denominator):
    """(score, {threshold: AP}) computed with the official's arithmetic and types."""
    precisions = [np.sum(best_oks > threshold) / np.float32(denominator)
                  for threshold in OKS_THRESHOLDS]
    per_threshold = {round(float(t), 2): float(ap) for t, ap in zip(OKS_THRESHOLDS, precisions)}
    return float(np.mean(precisions)), per_threshold


def _denominator(gt, submission):
    """Sum over images of max(#gt, #pred) when present, else the image's number of boxes."""
    present = np.maximum(gt.people_per_image, submission.people_per_image)
    return int(np.where(submission.present, present, gt.boxes_per_image).sum())


def per_keypoint_accuracy(gt, submission, best_oks, best_pred):
    """PCK-style accuracy per keypoint over the people found with OKS > MATCH_THRESHOLD.

    For each such person and counted keypoint, the keypoint is right when its own OKS term
    against the person's best match is above 0.5. Returns 14 floats (None for a keypoint
    that no found person has counted).
    """
    found = best_oks > MATCH_THRESHOLD
    terms = keypoint_terms(gt.keypoints[found], gt.area_plus_one[found],
                           submission.keypoints[best_pred[found]])
    counted = gt.counted[found]
    right = ((terms > 0.5) & counted).sum(axis=0)
    total = counted.sum(axis=0)
    return [float(r / t) if t else None for r, t in zip(right, total)]


def aic_map(predictions, references):
    """The official AI Challenger keypoint mAP of `predictions` against `references`.

    Both are lists of dicts as loaded from the JSON files (predictions: {"image_id",
    "keypoint_annotations"}; references: {"image_id", "keypoint_annotations",
    "human_annotations"}). Returns a dict: "score" (float), "per_threshold" ({0.5: AP, 0.55:
    ..., 0.95: ...}), "ap50", "ap75", "per_keypoint" (14 accuracies or None, JOINT_NAMES
    order), "num_images", "num_gt", "num_pred", "denominator", "found_people",
    "missed_people", "spurious_people", "missing_images" and "warnings" (list of str).
    Raises InputError for a malformed reference; malformed predictions only warn.
    """
    warnings = []
    gt = parse_references(references)
    submission = parse_predictions(predictions, gt.image_ids, warnings)
    warnings += [f"{image_id} is not in the prediction JSON file."
                 for image_id, present in zip(gt.image_ids, submission.present) if not present]
    best_oks, best_pred = best_matches(gt, submission)
    denominator = _denominator(gt, submission)
    if denominator == 0:
        warnings.append("nothing to score: no ground-truth or predicted people; score 0.")
        score, per_threshold = 0.0, {round(float(t), 2): 0.0 for t in OKS_THRESHOLDS}
    else:
        score, per_threshold = official_score(best_oks, denominator)
    found = best_oks > MATCH_THRESHOLD
    num_pred = int(submission.people_per_image.sum())
    return {
        "score": score, "per_threshold": per_threshold,
        "ap50": per_threshold[0.5], "ap75": per_threshold[0.75],
        "per_keypoint": per_keypoint_accuracy(gt, submission, best_oks, best_pred),
        "num_images": len(gt.image_ids), "num_gt": len(best_oks), "num_pred": num_pred,
        "denominator": denominator, "found_people": int(found.sum()),
        "missed_people": int((~found).sum()),
        "spurious_people": num_pred - len(np.unique(best_pred[found])),
        "missing_images": int((~submission.present).sum()), "warnings": warnings,
    }


# --------------------------------------------------------------------------------------------
# Oracle mode: ground-truth maps rendered and parsed back.
# --------------------------------------------------------------------------------------------
def _reference_keypoints(record):
    """(P, 14, 3) float64 keypoints and (P, 4) boxes of a reference record."""
    names = list(record["keypoint_annotations"])
    keypoints = np.array([record["keypoint_annotations"][name] for name in names],
                         dtype=np.float64).reshape(len(names), NUM_JOINTS, 3)
    boxes = np.array([record["human_annotations"][name] for name in names],
                     dtype=np.float64).reshape(len(names), 4)
    return keypoints, boxes


def oracle_canvas(record, keypoints, boxes):
    """(width, height) in original pixels of the image the annotations live in.

    The record's own "width"/"height" when present (pre-process records carry them); otherwise
    the extent of the labelled keypoints and boxes plus a margin.
    """
    width, height = record.get("width"), record.get("height")
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) \
            and width > 0 and height > 0:
        return float(width), float(height)
    labelled = keypoints[(keypoints[:, :, 2] == 1) | (keypoints[:, :, 2] == 2)][:, :2]
    corners = np.concatenate([labelled, boxes[:, 2:4], np.ones((1, 2))], axis=0)
    extent = corners.max(axis=0)
    canvas = extent * (1.0 + ORACLE_MARGIN_FRACTION) + ORACLE_MARGIN_PIXELS
    return float(canvas[0]), float(canvas[1])


def oracle_grid(canvas, cfg):
    """(factor, (rows, cols)): resize factor making the canvas cfg.inference_height high, and
    the grid of the resized canvas padded up to a multiple of cfg.stride."""
    width, height = canvas
    factor = cfg.inference_height / height
    rows = math.ceil(cfg.inference_height / cfg.stride)
    cols = math.ceil(width * factor / cfg.stride)
    return factor, (rows, max(cols, 1))


def oracle_image(record, cfg):
    """Render one reference record's maps, parse them; (prediction dict, render_s, parse_s).

    Keypoints are scaled by the factor that makes the canvas cfg.inference_height high
    (x_input = x * factor, the same convention parse_poses inverts with scale=(factor, factor)).
    """
    from data_generator import render_targets
    from inference import parse_poses, people_to_aic

    keypoints, boxes = _reference_keypoints(record)
    factor, grid_shape = oracle_grid(oracle_canvas(record, keypoints, boxes), cfg)
    scaled = keypoints.copy()
    scaled[:, :, :2] *= factor
    started = time.perf_counter()
    heatmaps, pafs = render_targets(scaled, grid_shape, cfg.stride, cfg.heatmap_sigma,
                                    cfg.paf_width)
    rendered = time.perf_counter()
    people, _ = parse_poses(heatmaps, pafs, cfg, stride=cfg.stride, scale=(factor, factor),
                            offset=(0, 0))
    parsed = time.perf_counter()
    prediction = {"image_id": record["image_id"], "keypoint_annotations": people_to_aic(people)}
    return prediction, rendered - started, parsed - rendered


def oracle_predictions(references, cfg, limit=None, progress=False):
    """Predictions made by rendering each reference image's ground-truth maps and parsing them.

    references: list of AIC annotation dicts (validated with parse_references; InputError if
    malformed). cfg: a Config (stride, heatmap_sigma, paf_width, inference_height and the
    parsing thresholds are used). limit: only the first `limit` records. progress: show a
    tqdm bar on stderr. Returns (predictions, timing) where predictions is a list of
    {"image_id", "keypoint_annotations"} dicts in reference order and timing is
    {"images": n, "render_ms": mean ms per image, "parse_ms": mean ms per image}.
    """
    from tqdm import tqdm

    records = references[:limit] if limit is not None else references
    parse_references(records)
    predictions, render_seconds, parse_seconds = [], 0.0, 0.0
    for record in tqdm(records, desc="oracle", unit="image", disable=not progress):
        prediction, render_time, parse_time = oracle_image(record, cfg)
        predictions.append(prediction)
        render_seconds += render_time
        parse_seconds += parse_time
    count = max(len(records), 1)
    timing = {"images": len(records), "render_ms": 1000.0 * render_seconds / count,
              "parse_ms": 1000.0 * parse_seconds / count}
    return predictions, timing


# --------------------------------------------------------------------------------------------
# Model mode: a checkpoint run over a folder of images.
# --------------------------------------------------------------------------------------------
def image_list(images_dir, references=None, limit=None):
    """[(image_id, path or None)] of the reference's images in DIR, or of all images in DIR.

    With references, a file is looked up by image_id whatever its extension (None when there is
    no such file); without, every image file in DIR is listed in sorted order.
    """
    try:
        files = sorted(name for name in os.listdir(images_dir)
                       if name.lower().endswith(IMAGE_EXTENSIONS))
    except OSError as error:
        raise InputError(f"{images_dir}: cannot list images ({error.strerror or error})")
    by_id = {}
    for name in files:
        by_id.setdefault(os.path.splitext(name)[0], os.path.join(images_dir, name))
    if references is None:
        items = [(image_id, path) for image_id, path in by_id.items()]
    else:
        items = [(record["image_id"], by_id.get(record["image_id"])) for record in references]
    return items[:limit] if limit is not None else items


def model_predictions(model, cfg, items, warnings, progress=True):
    """Run inference.estimate_poses over [(image_id, path)]; unreadable images are skipped.

    Returns the list of prediction dicts; a skipped image gets a warning and no entry, so the
    metric counts it as missing.
    """
    from tqdm import tqdm

    import inference

    predictions = []
    for image_id, path in tqdm(items, desc="predict", unit="image", disable=not progress):
        if path is None:
            warnings.append(f"{image_id}: no image file found; skipped (counts as missing).")
            continue
        try:
            image = utils.read_image_rgb(path)
        except utils.ImageError as error:
            warnings.append(f"{error}; skipped (counts as missing).")
            continue
        people, _ = inference.estimate_poses(model, image, cfg)
        predictions.append({"image_id": image_id,
                            "keypoint_annotations": inference.people_to_aic(people)})
    return predictions


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
def load_json_list(path, what):
    """Load a JSON file that must hold a list; InputError (one line, naming it) otherwise."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            value = json.load(handle)
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} file ({error.strerror or error})")
    except (ValueError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path}: the {what} file is not valid JSON ({reason})")
    if not isinstance(value, list):
        raise InputError(f"{path}: the {what} file must hold a JSON list, "
                         f"got {type(value).__name__}")
    return value


def format_table(result):
    """The diagnostics as a few human-readable lines."""
    thresholds = "  ".join(f"{t:.2f}:{ap:.4f}" for t, ap in result["per_threshold"].items())
    keypoints = [f"{name} {'  n/a' if value is None else format(value, '.3f')}"
                 for name, value in zip(JOINT_NAMES, result["per_keypoint"])]
    lines = [
        f"images {result['num_images']} ({result['missing_images']} missing from the "
        f"predictions)   people: {result['num_gt']} annotated, {result['num_pred']} predicted",
        f"found (OKS > 0.5) {result['found_people']}   missed {result['missed_people']}   "
        f"spurious {result['spurious_people']}   denominator {result['denominator']}",
        f"AP@0.50 {result['ap50']:.4f}   AP@0.75 {result['ap75']:.4f}",
        "AP per OKS threshold: " + thresholds,
        "per-keypoint accuracy (found people, keypoint OKS term > 0.5):",
    ]
    for start in range(0, NUM_JOINTS, 4):
        lines.append("  " + "   ".join(keypoints[start:start + 4]))
    return lines


def json_ready(result, extra=None):
    """The result with threshold keys written "0.50" etc., plus any extra fields."""
    ready = dict(result)
    ready["per_threshold"] = {f"{t:.2f}": ap for t, ap in result["per_threshold"].items()}
    ready.update(extra or {})
    return ready


def report(result, args, extra=None):
    """Print the result (JSON line, or warnings + table + Score line); write --json_out."""
    ready = json_ready(result, extra)
    if args.json_out:
        utils.atomic_write_json(args.json_out, ready, indent=2)
    if args.json:
        print(json.dumps(ready))
        return
    warnings = result["warnings"]
    shown = warnings if args.max_warnings <= 0 else warnings[:args.max_warnings]
    for warning in shown:
        print("warning: " + warning)
    if len(shown) < len(warnings):
        print(f"warning: ... and {len(warnings) - len(shown)} more warnings "
              "(--max_warnings 0 shows all)")
    for key, value in (extra or {}).items():
        print(f"{key}: {value}")
    for line in format_table(result):
        print(line)
    print("Score: %.8f" % result["score"])


def build_parser():
    parser = argparse.ArgumentParser(
        description="Score AI Challenger keypoint predictions with the official mAP "
                    "(last line: 'Score: %.8f'), make predictions with a model, or score the "
                    "oracle (ground-truth maps parsed back).",
        epilog="Without --json the last line is 'Score: %.8f' (the official evaluator's "
               "number), after warnings and a diagnostics table; with --json stdout is one line "
               "of JSON. Unreadable files and malformed references exit with status 2.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--submit", metavar="PRED.json", help="score this submission file")
    mode.add_argument("--model", metavar="PATH",
                      help="run this checkpoint (model.load_checkpoint) over --images with "
                           "its own config.json; config options given here override it "
                           "(--preset is not used)")
    mode.add_argument("--oracle", action="store_true",
                      help="render the reference's ground-truth maps, parse and score them")
    parser.add_argument("--ref", metavar="ANNOTATIONS.json",
                        help="official annotation file to score against (required except for "
                             "--model on test images)")
    parser.add_argument("--images", metavar="DIR", help="image folder for --model")
    parser.add_argument("--out", metavar="PRED.json",
                        help="write the predictions here (--model default: predictions.json)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="only the first N images (of the reference, or of DIR)")
    parser.add_argument("--json", action="store_true",
                        help="print only one line of JSON with the score and the breakdown")
    parser.add_argument("--json_out", "--json-out", metavar="PATH",
                        help="also write the breakdown as JSON to this file")
    parser.add_argument("--max_warnings", "--max-warnings", type=int, default=50,
                        help="warnings printed (default 50; 0: all); all are in the --json output")
    parser.add_argument("--no_progress", "--no-progress", action="store_true",
                        help="no progress bars")
    config.add_config_arguments(parser)
    return parser


def _check_arguments(parser, args):
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    if (args.submit or args.oracle) and not args.ref:
        parser.error("--submit and --oracle need --ref ANNOTATIONS.json")
    if args.model and not args.images:
        parser.error("--model needs --images DIR")


def _inference_config(checkpoint_cfg, args):
    """The checkpoint's config with the config options given on the command line on top."""
    return dataclasses.replace(checkpoint_cfg, **config.overrides_from_args(args))


def run_submit(args):
    predictions = load_json_list(args.submit, "predictions")
    references = load_json_list(args.ref, "reference")
    report(aic_map(predictions, references), args)


def run_model(args):
    import model as model_module

    references = load_json_list(args.ref, "reference") if args.ref else None
    if references is not None and args.limit is not None:
        references = references[:args.limit]
    if references is not None:
        parse_references(references)
    try:
        network, checkpoint_cfg = model_module.load_checkpoint(args.model)
    except (OSError, ValueError) as error:
        detail = str(error) if args.model in str(error) else f"{args.model}: {error}"
        raise InputError(f"cannot load the checkpoint: {detail}")
    cfg = _inference_config(checkpoint_cfg, args)
    warnings = []
    items = image_list(args.images, references, args.limit)
    predictions = model_predictions(network, cfg, items, warnings, not args.no_progress)
    out = args.out or "predictions.json"
    utils.atomic_write_json(out, predictions)
    if references is None:
        for warning in warnings:
            print("warning: " + warning, file=sys.stderr)
        print(f"wrote {len(predictions)} predictions to {out}")
        return
    result = aic_map(predictions, references)
    result["warnings"] = warnings + result["warnings"]
    report(result, args, {"predictions_file": out})


def run_oracle(args):
    cfg = config.config_from_args(args)
    references = load_json_list(args.ref, "reference")
    if args.limit is not None:
        references = references[:args.limit]
    predictions, timing = oracle_predictions(references, cfg, progress=not args.no_progress)
    if args.out:
        utils.atomic_write_json(args.out, predictions)
    extra = {"render_ms_per_image": round(timing["render_ms"], 3),
             "parse_ms_per_image": round(timing["parse_ms"], 3)}
    report(aic_map(predictions, references), args, extra)


def main(argv=None):
    """Run the command line; returns the exit status (2 for unreadable or malformed input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    try:
        if args.submit:
            run_submit(args)
        elif args.model:
            run_model(args)
        else:
            run_oracle(args)
    except InputError as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
