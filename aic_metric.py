"""The AI Challenger 2017 keypoint metric (the official evaluator's job, vectorised), NumPy only.

    import aic_metric
    result = aic_metric.aic_map(predictions, references)   # lists of dicts as in the JSON files
    print("Score: %.8f" % result["score"])

This module needs only NumPy and config.py (no TensorFlow), so the metric can be used where the
network cannot. It computes the number that the challenge's published evaluator
(``Evaluation/keypoint_eval/keypoint_eval.py``, a Python 2 script) prints, quirks included, to
the last printed digit:

- Only ground-truth keypoints with v == 1 count. With delta_k = 2 * AIC_OKS_SIGMAS[k] and
  s = float32((y2 - y1) * (x2 - x1)) of the person's box, OKS(gt, pred) is the mean over the
  counted keypoints of exp(h / delta_k^2 / (s + 1)) with h = -d^2 / 2; a person with no
  counted keypoint has OKS 0. The mean is summed in the same order as NumPy sums the
  official's 1-D array, so every OKS is bit-identical to the official one.
- Integer division. The official builds a NumPy array from each person's 42 numbers, so the
  array is an integer array when all 42 are integers in the JSON (written without a decimal
  point or exponent) and a float array otherwise (one float among them is enough, the third
  values included). When the ground-truth person's array and the predicted person's array are
  both integer, d^2 is an integer and Python 2 floor-divides: h = floor(-d^2 / 2), one half
  lower than -d^2 / 2 when d^2 is odd. Otherwise h = -d^2 / 2. This is decided per pair of
  people. (Where the official would crash, on a predicted person whose third values are not
  numbers, the person is integer when every number among its 42 values is an integer.)
- Every ground-truth person keeps its best OKS over the image's predicted people (no one-to-one
  assignment), and the image adds max(#gt people, #predicted people) to the denominator. An
  image absent from the predictions adds its number of boxes to the denominator and zeros.
- Score = mean over t in 0.50, 0.55, ..., 0.95 of count(best OKS > t) / float32(denominator).
- Prediction image_ids are cut at the first '.' to find their image. Of several entries of one
  image the official keeps the last entry whose image_id has no extension (its dictionary,
  keyed by the image_id as written, is overwritten, and it looks the image up without an
  extension); each repeat gets a "duplicated" warning, as the official gives. The official
  crashes on an image whose entries all have an extension; here they count, the last of them
  when there are several. Entries without image_id or keypoint_annotations are skipped with a
  warning and replace nothing. The third number of each predicted keypoint is ignored.

Beyond the official script, malformed predictions (a keypoint list that is not 42 numbers, x or y
not a finite number, keypoint_annotations not an object, image_id not a string) are reported
with a warning naming the image and person, and count as no prediction. A malformed reference
(the ground truth itself) raises InputError naming the record, because skipping it would
silently change the denominator. Coordinates beyond about 9e7 pixels, where the official's
int64 arithmetic would overflow, are not reproduced (their OKS terms are 0 either way unless the
official's overflow wraps around).

Extra diagnostics (returned by ``aic_map``): AP at OKS 0.5 and 0.75; missed people
(ground-truth people whose best OKS is <= 0.5), spurious people (predicted people that are the
best match of no ground-truth person with OKS > 0.5), and a PCK-style per-keypoint accuracy:
among ground-truth people found with OKS > 0.5, the fraction of their counted (v == 1)
keypoints whose own OKS term exp(h / delta_k^2 / (s + 1)), measured against the person's best
match, is above 0.5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import NamedTuple

import numpy as np

from config import AIC_OKS_SIGMAS, NUM_JOINTS

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
# The number types from which NumPy builds an integer array.
INTEGER_TYPES = frozenset((int, np.int32, np.int64))
VALUES_PER_PERSON = 3 * NUM_JOINTS
# Skipped prediction entries warned one by one, per reason; the rest of that reason get one
# summary line. A 50 MB file of 25 million tiny entries ("[1,1,...]", "[{},{},...]") would
# otherwise make 25 million warnings: gigabytes of memory and of --json output.
MAX_ENTRY_WARNINGS = 100


class InputError(ValueError):
    """An unreadable file or a malformed reference; the message names the file or record."""


# --------------------------------------------------------------------------------------------
# Parsing references and predictions into flat arrays.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GroundTruth:
    """All ground-truth people of the reference, flattened in reference order.

    keypoints (G, 14, 3) float64 (x, y, v) in image pixels; area_plus_one (G,) float32 (s + 1
    as the official computes it); integer (G,) bool (all 42 numbers were integers);
    image_of_person (G,) int; people_per_image (I,) int, the number of keypoint_annotations;
    boxes_per_image (I,) int, the number of human_annotations (what the official adds for an
    image absent from the predictions); counted (G, 14) bool (v == 1).
    """

    image_ids: list
    keypoints: np.ndarray
    area_plus_one: np.ndarray
    integer: np.ndarray
    image_of_person: np.ndarray
    people_per_image: np.ndarray
    boxes_per_image: np.ndarray
    counted: np.ndarray


@dataclasses.dataclass
class Submission:
    """The valid predicted people of the reference's images, grouped by reference image.

    keypoints (P, 14, 2) float64 (x, y) in image pixels; integer (P,) bool (the official would
    have built an integer array); people of image i are rows offsets[i]:offsets[i] +
    people_per_image[i]; present (I,) bool says whether the image had an entry at all (an
    absent image scores zeros with a warning).
    """

    keypoints: np.ndarray
    integer: np.ndarray
    offsets: np.ndarray
    people_per_image: np.ndarray
    present: np.ndarray


class _Entry(NamedTuple):
    """A prediction entry the official reads: its position, image_id as written and cut."""

    index: int
    raw_id: str
    image_id: str
    people: object


def _is_number_list(values, length):
    """True for a list (or tuple) of `length` numbers (bools and strings excluded)."""
    return (type(values) in (list, tuple) and len(values) == length
            and set(map(type, values)) <= NUMBER_TYPES)


def _is_integer_list(values, types=None):
    """True when every number among `values` is an integer: NumPy's dtype would be integer.

    types: set(map(type, values)) when the caller has it already.
    """
    return (set(map(type, values)) if types is None else types) & NUMBER_TYPES <= INTEGER_TYPES


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
        if not _is_number_list(keypoints[name], VALUES_PER_PERSON):
            raise InputError(f"{where} {name}: keypoints must be {VALUES_PER_PERSON} numbers")
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
    keypoints = _finite_array(keypoint_rows, VALUES_PER_PERSON, where.__getitem__)
    boxes = _finite_array(box_rows, 4, where.__getitem__)
    # The official computes the area in Python (exact for integer boxes) and rounds it once to
    # float32; float64 products of these integers are exact too, so one rounding happens here.
    area = ((boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])).astype(np.float32)
    keypoints = keypoints.reshape(-1, NUM_JOINTS, 3)
    people = np.asarray(people, dtype=np.int64)
    return GroundTruth(
        image_ids=image_ids, keypoints=keypoints, area_plus_one=area + np.float32(1),
        integer=np.array([_is_integer_list(row) for row in keypoint_rows], dtype=bool),
        image_of_person=np.repeat(np.arange(len(image_ids)), people),
        people_per_image=people, boxes_per_image=np.asarray(boxes_count, dtype=np.int64),
        counted=keypoints[:, :, 2] == 1)


def _entry_problem(index, entry):
    """Why the official cannot read prediction entry `index` (a warning), or None."""
    if not isinstance(entry, dict):
        return "not_an_object", f"prediction entry {index} is not an object; skipped."
    if "image_id" not in entry:
        return "no_image_id", f"prediction entry {index} has no key 'image_id'; skipped."
    raw_id = entry["image_id"]
    if not isinstance(raw_id, str):
        return "image_id", (f"prediction entry {index}: image_id {raw_id!r} is not a string; "
                            "skipped.")
    if "keypoint_annotations" not in entry:
        return "no_keypoints", f"{raw_id} does not have key 'keypoint_annotations'; skipped."
    return None


def _usable_entries(predictions, warnings):
    """The entries the official reads (image_id and keypoint_annotations present), in order.

    Entries the official crashes on (not an object, image_id not a string) are skipped with a
    warning here; so are those it skips itself. Past MAX_ENTRY_WARNINGS skipped entries of one
    reason, the others of that reason are counted in one last warning.
    """
    entries, skipped = [], {}
    for index, entry in enumerate(predictions):
        problem = _entry_problem(index, entry)
        if problem is None:
            raw_id = entry["image_id"]
            entries.append(_Entry(index, raw_id, raw_id.split(".")[0],
                                  entry["keypoint_annotations"]))
            continue
        skipped[problem[0]] = skipped.get(problem[0], 0) + 1
        if skipped[problem[0]] <= MAX_ENTRY_WARNINGS:
            warnings.append(problem[1])
    for reason, count in skipped.items():
        if count > MAX_ENTRY_WARNINGS:
            warnings.append(f"... and {count - MAX_ENTRY_WARNINGS} more prediction entries "
                            f"skipped for the same reason ({reason}).")
    return entries


def _chosen_entries(entries, warnings):
    """One entry per image: the last without an extension, else the last (module docstring).

    Every repeat of an image gets a warning naming the entry that counts, in file order.
    """
    groups = {}
    for entry in entries:
        groups.setdefault(entry.image_id, []).append(entry)
    chosen = {}
    for image_id, group in groups.items():
        plain = [entry for entry in group if entry.raw_id == image_id]
        chosen[image_id] = (plain or group)[-1]
    seen = set()
    for entry in entries:
        if entry.image_id in seen:
            winner = chosen[entry.image_id]
            warnings.append(f"{entry.raw_id} is duplicated in prediction JSON file; entry "
                            f"{winner.index} ({winner.raw_id}) counts.")
        seen.add(entry.image_id)
    return list(chosen.values())


def _predicted_xy(image_id, name, values, warnings):
    """(the 42 numbers of one predicted person, integer?) or None (with a warning).

    Non-number third values are replaced by 0: the metric ignores them.
    """
    if type(values) in (list, tuple) and len(values) == VALUES_PER_PERSON:
        types = set(map(type, values))
        if types <= NUMBER_TYPES:
            return values, _is_integer_list(values, types)
        # Only x and y must be numbers: the third value is a confidence the metric ignores.
        xy = list(values[0::3]) + list(values[1::3])
        if set(map(type, xy)) <= NUMBER_TYPES:
            return ([0 if position % 3 == 2 else value for position, value in enumerate(values)],
                    _is_integer_list(values, types))
        problem = "has an x or y that is not a number"
    elif isinstance(values, (list, tuple)):
        problem = f"has {len(values)} values instead of {VALUES_PER_PERSON}"
    else:
        problem = f"is a {type(values).__name__}, not a list of {VALUES_PER_PERSON} numbers"
    warnings.append(f"{image_id} {name}: predicted keypoints {problem}; counted as no "
                    "prediction.")
    return None


def _collect_predictions(predictions, image_index, warnings):
    """Gather the valid people per reference image.

    Returns (rows, integer flags, owners, names, present, unknown image_ids).
    """
    rows, integer, owners, names = [], [], [], []
    present = np.zeros(len(image_index), dtype=bool)
    unknown = []
    for entry in _chosen_entries(_usable_entries(predictions, warnings), warnings):
        image = image_index.get(entry.image_id)
        if image is None:
            unknown.append(entry.image_id)
            continue
        present[image] = True
        if not isinstance(entry.people, dict):
            warnings.append(f"{entry.image_id}: 'keypoint_annotations' is not an object; the "
                            "image counts as having no predicted people.")
            continue
        for name, values in entry.people.items():
            person = _predicted_xy(entry.image_id, name, values, warnings)
            if person is not None:
                rows.append(person[0])
                integer.append(person[1])
                owners.append(image)
                names.append(f"{entry.image_id} {name}")
    return rows, integer, owners, names, present, unknown


def _finite_predictions(rows, integer, owners, names, warnings):
    """(P, 14, 2) float64 keypoints, integer flags and owners of the rows with finite x, y."""
    xy = float_rows(rows, VALUES_PER_PERSON).reshape(-1, NUM_JOINTS, 3)[:, :, :2]
    finite = np.isfinite(xy).all(axis=(1, 2))
    for bad in np.flatnonzero(~finite):
        warnings.append(f"{names[bad]}: predicted keypoints include a non-finite x or y "
                        "(NaN, infinity or too large); counted as no prediction.")
    return (np.ascontiguousarray(xy[finite]), np.asarray(integer, dtype=bool)[finite],
            np.asarray(owners, dtype=np.int64)[finite])


def parse_predictions(predictions, image_ids, warnings):
    """Validate the predictions against the reference's image_ids; return a Submission.

    Malformed entries and people are dropped with a warning appended to `warnings`.
    """
    if not isinstance(predictions, list):
        raise InputError("the predictions must be a JSON list of {image_id, "
                         "keypoint_annotations} objects")
    if predictions and not any(issubclass(kind, dict) for kind in set(map(type, predictions))):
        # Not a submission at all (another file, or people without their images): refuse it
        # instead of scoring zero with a warning per entry. An empty list still scores 0.
        raise InputError(f"the predictions are a list of {len(predictions)} entries and none "
                         "is an {image_id, keypoint_annotations} object (entry 0 is of type "
                         f"{type(predictions[0]).__name__})")
    image_index = {image_id: index for index, image_id in enumerate(image_ids)}
    rows, integer, owners, names, present, unknown = _collect_predictions(
        predictions, image_index, warnings)
    keypoints, integer, owners = _finite_predictions(rows, integer, owners, names, warnings)
    if unknown:
        warnings.append(f"{len(unknown)} predicted image(s) are not in the reference and were "
                        f"ignored (first: {unknown[0]}).")
    # Predicted people are grouped by reference image (a stable sort keeps their order).
    order = np.argsort(owners, kind="stable")
    people = np.bincount(owners, minlength=len(image_ids)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(people)[:-1]]).astype(np.int64)
    return Submission(keypoints=keypoints[order], integer=integer[order], offsets=offsets,
                      people_per_image=people, present=present)


# --------------------------------------------------------------------------------------------
# OKS of every (ground-truth person, predicted person) pair of an image.
# --------------------------------------------------------------------------------------------
def keypoint_terms(gt_keypoints, area_plus_one, pred_xy, floor_halves=None):
    """Per-keypoint OKS terms exp(h / delta_k^2 / (s + 1)), shape (N, 14) float64.

    gt_keypoints (N, 14, >=2) and pred_xy (N, 14, 2) hold (x, y) in image pixels;
    area_plus_one (N,) float32; floor_halves (N,) bool, None for all False: pairs whose two
    arrays are integer, for which h = floor(-d^2 / 2) (Python 2's integer division) instead of
    -d^2 / 2. d^2 is an exact integer in float64 for integer coordinates, so the floor is exact.
    The operations run in the official's order so that every term is bit-identical to it.
    """
    difference = gt_keypoints[:, :, :2] - pred_xy
    squared = difference[:, :, 0] ** 2 + difference[:, :, 1] ** 2
    halved = -squared / 2
    if floor_halves is not None:
        halved = np.where(np.asarray(floor_halves, dtype=bool)[:, None], np.floor(halved),
                          halved)
    # An inverted box (area <= -1) gives the official's odd values (inf, NaN) without noise.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return np.exp(halved / OKS_DELTAS ** 2 / area_plus_one[:, None])


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


def pair_terms(gt, submission, gt_index, pred_index):
    """keypoint_terms of the (gt person, predicted person) pairs given by two index arrays."""
    return keypoint_terms(gt.keypoints[gt_index], gt.area_plus_one[gt_index],
                          submission.keypoints[pred_index],
                          gt.integer[gt_index] & submission.integer[pred_index])


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
    oks = official_mean(pair_terms(gt, submission, gt_index, pred_index),
                        gt.counted[gt_index])
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
    found = np.flatnonzero(best_oks > MATCH_THRESHOLD)
    terms = pair_terms(gt, submission, found, best_pred[found])
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


def _first_line(error):
    """The first line of an exception's message, or its type's name when it has none."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def load_json_list(path, what):
    """Load a JSON file that must hold a list; InputError (one line, naming it) otherwise.

    A UTF-8 byte-order mark, which some Windows editors write, is allowed.
    """
    try:
        with open(path, "r", encoding="utf-8-sig") as handle:
            value = json.load(handle)
    except OSError as error:
        raise InputError(f"{path}: cannot read the {what} file ({error.strerror or error})")
    except ValueError as error:
        if os.path.getsize(path) == 0:  # JSON's own "Expecting value" hides the real reason.
            raise InputError(f"{path}: the {what} file is empty")
        raise InputError(f"{path}: the {what} file is not valid JSON ({_first_line(error)})")
    except RecursionError as error:
        raise InputError(f"{path}: the {what} file is not valid JSON ({_first_line(error)})")
    if not isinstance(value, list):
        raise InputError(f"{path}: the {what} file must hold a JSON list, "
                         f"got {type(value).__name__}")
    return value
