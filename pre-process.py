#!/usr/bin/env python3
"""Turn AI Challenger keypoint releases into per-image records, or write a synthetic set.

Sources
    With no source option, every split found under ``cfg.data_dir`` is converted: the official
    zips (``ai_challenger_keypoint_train_20170909.zip``, ``..._validation_20170911.zip``,
    ``..._test_a_20180103.zip``, ``..._test_b_20180103.zip``) are first extracted into the
    official folder layout beside them, then the folders are read. ``--annotations FILE
    --images DIR`` converts any AIC-format pair instead (``--split`` names its records file).
    Test A/B have no annotations: their records list the images, with no people.

Outputs (JSON lines, so that 210,000 records stream and the data generator reads them fast)
    ``{records_dir}/{split}.jsonl``: one line per kept image, sorted by image_id so that the
    output does not depend on the annotation file's order:
    ``{"image_id", "image_path" (relative to data_dir), "width", "height",
    "people": [{"name": "human1", "keypoints": [[x, y, v]] * 14, "box": [x1, y1, x2, y2]}]}``.
    ``{split}_rejects.jsonl``: one line per problem, ``{"image_id", "reason", "detail"}``, in
    annotation order. ``{split}_summary.json``: counts of images, people, visibility flags and
    problems by reason, also printed as a table. Every file is written atomically, and a re-run
    on the same input writes the same bytes.

Validation (every record; a bad one never stops the run)
    A record with any problem is dropped as a whole image, and all its problems are listed.
    Keeping the image without the bad person would teach the network that a real person is
    background, which is worse than losing the image. Checks: the record's structure and keys, image_id a plain file name, duplicate
    ids (identical copies keep the first; conflicting copies are all dropped), 42 finite numbers
    per person (bools and strings are not numbers), v in {1, 2, 3}, v = 3 exactly at (0, 0),
    labelled keypoints and boxes inside the image, boxes [x1, y1, x2, y2] with x1 < x2, y1 < y2,
    every person with a box and every box with a person, visible keypoints inside their box,
    and a missing, unreadable or truncated image. Coordinates may lie up to
    ``annotation_tolerance`` pixels (default 2) outside the image or box, because AIC marks
    joints on the image border. Occluded keypoints (v = 2) may lie outside their box: AIC's
    boxes enclose the visible body, and in the 1,342 real validation people of
    ``shared/data`` 459 of the 467 labelled keypoints outside their box are occluded ones.
    People whose 14 keypoints are all unlabelled are kept (the data generator masks them).
    Without its image (a missing file) a record still gets every check but the image-size ones,
    and the summary still counts its people and visibility flags.

Images
    The size comes from the file header (PIL reads it without decoding pixels) and truncation is
    caught by the JPEG end marker (FF D9) or the PNG IEND chunk, the same rule as
    utils.read_image_rgb. Decoding all 210,000 images would take far longer and catch only rare
    corruption inside the data; ``--full-decode`` does it when wanted. Sizes ignore EXIF
    orientation, as the data generator's decoder does. Images are checked on a thread pool.

Synthetic data (``--synthetic N --seed S``)
    Writes N images (90 % train, at least one validation image) in the official layout and JSON
    format under data_dir (40-hex-digit ids, integer keypoints, JPEG quality 90); run the script
    again without options to convert them. Each image is 240..640 pixels a side with a textured
    background (colour gradients, texture, noise) cluttered with boxes, discs, blobs, polygons
    and thin lines, and 1-6 people 35..95 % of the image high (smaller when there are more).
    A person is an articulated skeleton with human proportions whose torso lean, head tilt,
    shoulders, elbows, hips and knees are drawn within joint limits; limbs are thick round-ended
    segments with darker outlines, upper and lower segments in different colours and darker
    discs on the joints, so that joint centres (where the keypoints are) can be located; the
    torso is a polygon, the head an ellipse whose far end is the head-top keypoint, with a face
    when the person faces the camera (which tells left from right) and hair when not. People
    are drawn back to front (smaller ones first); a keypoint painted over by a later person is
    occluded (v = 2), one outside the frame unlabelled (v = 3, x = y = 0). A box is everything
    the person's shapes cover, clipped to the image. Image i depends on (seed, i) only, so the
    same seed gives the same bytes whatever the thread count. Rendering the ground truth of the
    synthetic validation set into maps and parsing them (evaluate.oracle_predictions, cpu
    preset) scores 0.956 under the official metric, so the resolution leaves room to learn.
"""

from __future__ import annotations

import argparse
import collections
import colorsys
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm

import config
from config import JOINT_NAMES, NUM_JOINTS, OCCLUDED, UNLABELLED, VISIBLE
from utils import (atomic_path, atomic_write_json, atomic_write_text, looks_truncated,
                   read_image_rgb)

ANNOTATION_KEYS = ("image_id", "keypoint_annotations", "human_annotations")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_TOLERANCE = 2.0  # Pixels; scripts pass cfg.annotation_tolerance.
CHUNK_SIZE = 64  # Images per thread-pool task: large enough to amortise the task overhead.
VISIBILITY_KEYS = ("1", "2", "3", "invalid")
SYNTHETIC_MARKER = "SYNTHETIC.txt"
SYNTHETIC_JPEG_QUALITY = 90
SYNTHETIC_VAL_FRACTION = 0.1
# Chance of 1..6 people in a synthetic image (mean 2.7, close to AIC's 2.75 per image).
PEOPLE_PROBABILITIES = (0.3, 0.25, 0.17, 0.12, 0.09, 0.07)


@dataclasses.dataclass(frozen=True)
class Release:
    """One official release: its top folder (= zip name), image folder and annotation file."""

    folder: str
    images: str
    annotations: str | None


RELEASES = {
    "train": Release("ai_challenger_keypoint_train_20170909", "keypoint_train_images_20170902",
                     "keypoint_train_annotations_20170909.json"),
    "val": Release("ai_challenger_keypoint_validation_20170911",
                   "keypoint_validation_images_20170911",
                   "keypoint_validation_annotations_20170911.json"),
    "test_a": Release("ai_challenger_keypoint_test_a_20180103",
                      "keypoint_test_a_images_20180103", None),
    "test_b": Release("ai_challenger_keypoint_test_b_20180103",
                      "keypoint_test_b_images_20180103", None),
}

REASONS = {
    "not_an_object": "the record is not a JSON object",
    "missing_key": "the record lacks image_id, keypoint_annotations or human_annotations",
    "bad_image_id": "image_id is not a plain, non-empty file name",
    "malformed_annotations": "keypoint_annotations or human_annotations is not an object",
    "duplicate_image_id": "another record has the same image_id",
    "wrong_keypoint_count": "a person does not have 14 x 3 = 42 keypoint values",
    "not_a_number": "a keypoint or box value is not a finite number",
    "bad_visibility": "a visibility flag is not 1, 2 or 3",
    "unlabelled_not_zero": "an unlabelled keypoint (v = 3) is not at (0, 0)",
    "person_without_box": "a person has keypoints but no box",
    "box_without_person": "a box has no keypoints",
    "malformed_box": "a box is not [x1, y1, x2, y2] with x1 < x2 and y1 < y2",
    "keypoint_outside_box": "a visible keypoint lies outside its person's box",
    "keypoint_outside_image": "a labelled keypoint lies outside the image",
    "box_outside_image": "a box reaches outside the image",
    "missing_image": "the image file does not exist",
    "unreadable_image": "the image file is empty or not an image",
    "truncated_image": "the image file is truncated",
}


class SourceError(RuntimeError):
    """A whole source is unusable (unreadable annotation file, bad zip, unsafe overwrite)."""


@dataclasses.dataclass
class Checked:
    """The outcome of validating one record: its people and the problems found."""

    index: int
    image_id: str | None = None
    people: list = dataclasses.field(default_factory=list)  # (name, (14, 3) array, (4,) box)
    problems: list = dataclasses.field(default_factory=list)  # (reason, detail)
    people_count: int = 0
    visibility: collections.Counter = dataclasses.field(default_factory=collections.Counter)


# --------------------------------------------------------------------------------------------
# Validation of one annotation record (pure; no files).
# --------------------------------------------------------------------------------------------
def _first_non_number(values):
    """Position of the first value that is not a finite JSON number, or None.

    Bools (a subclass of int), strings and None are not numbers. Written as one loop because
    it runs on every value of 210,000 records.
    """
    for position, value in enumerate(values):
        kind = type(value)
        if not ((kind is int and -2 ** 53 < value < 2 ** 53)
                or (kind is float and math.isfinite(value))):
            return position
    return None


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _natural_key(name):
    """Sort human2 before human10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]


def _check_image_id(image_id, where, problems):
    """Return image_id if it is a plain file name (no path parts), else note the problem."""
    if (isinstance(image_id, str) and image_id.strip() and image_id not in (".", "..")
            and not re.search(r"[/\\\x00]", image_id)):
        return image_id
    problems.append(("bad_image_id",
                     f"{where}: image_id {_short(image_id)} is not a plain file name"))
    return None


def _parse_keypoints(where, values, checked):
    """Return a person's 42 values as a (14, 3) float array (x, y, v), or None after noting why.

    The visibility flags of every well-formed list are counted, even if the record is rejected
    later, so that the summary describes all the annotations checked.
    """
    if not isinstance(values, list) or len(values) != 3 * NUM_JOINTS:
        size = f"{len(values)} values" if isinstance(values, list) else f"a {type(values).__name__}"
        checked.problems.append(("wrong_keypoint_count", f"{where}: keypoints are {size}, "
                                 f"expected a list of {3 * NUM_JOINTS} numbers"))
        return None
    bad = _first_non_number(values)
    if bad is not None:
        checked.problems.append(("not_a_number", f"{where}: keypoint value {bad} is "
                                 f"{_short(values[bad])}"))
        return None
    keypoints = np.asarray(values, dtype=np.float64).reshape(NUM_JOINTS, 3)
    flags = keypoints[:, 2]
    checked.visibility.update(str(int(flag)) if flag in (1, 2, 3) else "invalid" for flag in flags)
    wrong = np.flatnonzero((flags != VISIBLE) & (flags != OCCLUDED) & (flags != UNLABELLED))
    if wrong.size:
        joint = wrong[0]
        checked.problems.append(("bad_visibility", f"{where}: {JOINT_NAMES[joint]} has "
                                 f"v = {flags[joint]:g}, expected 1, 2 or 3"))
        return None
    return keypoints


def _parse_box(where, values, problems):
    """Return a box [x1, y1, x2, y2] as a float array, or None after noting why."""
    if not isinstance(values, list) or len(values) != 4:
        problems.append(("malformed_box", f"{where}: box {_short(values)} is not [x1, y1, x2, y2]"))
        return None
    bad = _first_non_number(values)
    if bad is not None:
        problems.append(("not_a_number", f"{where}: box value {_short(values[bad])} is not a "
                         "number"))
        return None
    box = np.asarray(values, dtype=np.float64)
    if box[2] <= box[0] or box[3] <= box[1]:
        problems.append(("malformed_box", f"{where}: box {values} has x2 <= x1 or y2 <= y1"))
        return None
    return box


def _check_person_geometry(where, keypoints, box, tolerance, problems):
    """v = 3 must be at (0, 0); visible (v = 1) keypoints must lie in the box (+- tolerance)."""
    flags = keypoints[:, 2]
    stray = np.flatnonzero((flags == UNLABELLED) & np.any(keypoints[:, :2] != 0, axis=1))
    if stray.size:
        x, y = keypoints[stray[0], :2]
        problems.append(("unlabelled_not_zero", f"{where}: {JOINT_NAMES[stray[0]]} has v = 3 "
                         f"at ({x:g}, {y:g}), expected (0, 0)"))
    x, y = keypoints[:, 0], keypoints[:, 1]
    outside = (flags == VISIBLE) & ((x < box[0] - tolerance) | (x > box[2] + tolerance)
                                    | (y < box[1] - tolerance) | (y > box[3] + tolerance))
    if outside.any():
        joint = np.flatnonzero(outside)[0]
        problems.append(("keypoint_outside_box", f"{where}: visible {JOINT_NAMES[joint]} at "
                         f"({x[joint]:g}, {y[joint]:g}) is outside box "
                         f"{[float(value) for value in box]}"))


def _check_people(checked, keypoints_by_name, boxes_by_name, tolerance):
    """Validate every person of a record; boxes_by_name is None when the record has none."""
    prefix = f"record {checked.index}"
    checked.people_count = len(keypoints_by_name)
    for name in sorted(keypoints_by_name, key=_natural_key):
        where = f"{prefix}, {name}"
        keypoints = _parse_keypoints(where, keypoints_by_name[name], checked)
        if boxes_by_name is None:
            continue
        if name not in boxes_by_name:
            checked.problems.append(("person_without_box", f"{where}: no box in human_annotations"))
            continue
        box = _parse_box(where, boxes_by_name[name], checked.problems)
        if keypoints is not None and box is not None:
            _check_person_geometry(where, keypoints, box, tolerance, checked.problems)
            checked.people.append((name, keypoints, box))
    for name in sorted(set(boxes_by_name or ()) - set(keypoints_by_name), key=_natural_key):
        checked.problems.append(("box_without_person",
                                 f"{prefix}, {name}: a box but no keypoint_annotations"))


def validate_annotation(record, index, tolerance=DEFAULT_TOLERANCE):
    """Check one AIC annotation record without its image; return a Checked. Never raises.

    index: the record's position in the annotation file, used in every problem's detail.
    """
    checked = Checked(index)
    if not isinstance(record, dict):
        checked.problems.append(("not_an_object", f"record {index} is a {type(record).__name__}, "
                                 "not an object"))
        return checked
    missing = [key for key in ANNOTATION_KEYS if key not in record]
    if missing:
        checked.problems.append(("missing_key", f"record {index}: no {', '.join(missing)}"))
    if "image_id" in record:
        checked.image_id = _check_image_id(record["image_id"], f"record {index}", checked.problems)
    if "keypoint_annotations" not in record:
        return checked
    keypoints_by_name = record["keypoint_annotations"]
    boxes_by_name = record.get("human_annotations")  # None when missing (reported above)
    if not isinstance(keypoints_by_name, dict) or not (
            isinstance(boxes_by_name, dict) or "human_annotations" not in record):
        checked.problems.append(("malformed_annotations", f"record {index}: keypoint_annotations "
                                 "and human_annotations must both be JSON objects"))
        return checked
    _check_people(checked, keypoints_by_name, boxes_by_name, tolerance)
    return checked


def check_inside_image(checked, width, height, tolerance=DEFAULT_TOLERANCE):
    """Note labelled keypoints and boxes more than `tolerance` pixels outside a width x height
    image (coordinates run from 0 to width and 0 to height)."""
    for name, keypoints, box in checked.people:
        where = f"record {checked.index}, {name}"
        x, y = keypoints[:, 0], keypoints[:, 1]
        outside = (keypoints[:, 2] != UNLABELLED) & ((x < -tolerance) | (x > width + tolerance)
                                                     | (y < -tolerance) | (y > height + tolerance))
        if outside.any():
            joint = np.flatnonzero(outside)[0]
            checked.problems.append(("keypoint_outside_image", f"{where}: {JOINT_NAMES[joint]} at "
                                     f"({x[joint]:g}, {y[joint]:g}) is outside the "
                                     f"{width}x{height} image"))
        if (min(box[0], box[1]) < -tolerance or box[2] > width + tolerance
                or box[3] > height + tolerance):
            checked.problems.append(("box_outside_image", f"{where}: box "
                                     f"{[float(value) for value in box]} is outside the "
                                     f"{width}x{height} image"))


def flag_duplicates(checked_records, records):
    """Mark repeated image ids: identical copies lose to the first, conflicting ones all go."""
    groups = collections.defaultdict(list)
    for checked in checked_records:
        if checked.image_id is not None:
            groups[checked.image_id].append(checked)
    for group in groups.values():
        if len(group) < 2:
            continue
        first = group[0]
        conflicting = any(records[other.index] != records[first.index] for other in group[1:])
        indices = ", ".join(str(checked.index) for checked in group)
        for position, checked in enumerate(group):
            if position == 0 and not conflicting:
                continue
            kind = "conflicting" if conflicting else f"identical copy of record {first.index};"
            checked.problems.append(("duplicate_image_id", f"record {checked.index}: {kind} "
                                     f"records {indices} share image_id {checked.image_id}"))


# --------------------------------------------------------------------------------------------
# Images.
# --------------------------------------------------------------------------------------------
def scan_images(images_dir):
    """Map image id (file name without extension) -> file name of every image in images_dir.

    One directory listing instead of one stat per record: much faster for 210,000 files.
    """
    found = {}
    if not os.path.isdir(images_dir):
        return found
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, extension = os.path.splitext(entry.name)
            extension = extension.lower()
            if extension in IMAGE_EXTENSIONS and not entry.name.startswith("."):
                if stem not in found or extension == ".jpg":
                    found[stem] = entry.name
    return found


def _looks_truncated(path, size):
    """utils.looks_truncated on the file's last 16 bytes, read without reading the whole file."""
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 16))
        return looks_truncated(path, handle.read())


def inspect_image(path, full_decode=False):
    """Return (width, height, None) for a good image, or (0, 0, (reason, detail)) for a bad one.

    Reads only the header and the last bytes unless full_decode. Never raises: any error of one
    file becomes that file's problem, so one bad image cannot stop the run.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0, 0, ("missing_image", f"{path}: image file not found")
    try:
        if size == 0:
            return 0, 0, ("unreadable_image", f"{path}: image file is empty")
        if _looks_truncated(path, size):
            return 0, 0, ("truncated_image", f"{path}: image file is truncated (no end marker)")
        width, height = _decoded_size(path) if full_decode else _header_size(path)
    except Exception as error:  # Whatever a decoder raises (even a decompression-bomb guard).
        return 0, 0, ("unreadable_image", f"{path}: not a readable image ({error})")
    return int(width), int(height), None


def _decoded_size(path):
    height, width = read_image_rgb(path).shape[:2]
    return width, height


def _header_size(path):
    """(width, height) from the file header with Pillow, which does not decode the pixels."""
    try:
        from PIL import Image  # Pillow comes with matplotlib.
    except ImportError:  # Without Pillow, decode the pixels instead: slower, same answer.
        return _decoded_size(path)
    with Image.open(path) as image:
        return image.size


def map_ordered(function, items, jobs, description, unit="img"):
    """Apply `function` to every item on `jobs` threads; results keep the items' order.

    Threads suffice: file reads, PIL's header parsing of I/O-bound files and OpenCV all spend
    most of their time outside the GIL, and threads need no pickling.
    """
    items = list(items)
    chunks = [items[start:start + CHUNK_SIZE] for start in range(0, len(items), CHUNK_SIZE)]
    results = []
    with tqdm(total=len(items), desc=description, unit=unit, mininterval=0.5) as bar:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for chunk_results in pool.map(lambda chunk: [function(item) for item in chunk], chunks):
                results.extend(chunk_results)
                bar.update(len(chunk_results))
    return results


# --------------------------------------------------------------------------------------------
# One split: annotations + images -> records, rejects, summary.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Source:
    """What to convert: a split, its annotation file (None for test sets) and image folder."""

    split: str
    annotations: str | None
    images: str


def load_annotations(path):
    """Read an AIC annotation file: a JSON list of records. Raises SourceError naming the file."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            records = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"{path}: cannot read the annotation file ({error})") from error
    if not isinstance(records, list):
        raise SourceError(f"{path}: expected a JSON list of records, got a "
                          f"{type(records).__name__}")
    return records


def validate_split(source, tolerance, jobs, full_decode):
    """Validate every record of `source` and its image; return the list of Checked with sizes.

    Returns (checked records in annotation order, {index: (image path, width, height)}).
    """
    images = scan_images(source.images)
    if not os.path.isdir(source.images):
        print(f"warning: image folder {source.images} does not exist: every image is missing",
              file=sys.stderr)
    if source.annotations is None:
        checked_records = [Checked(index, image_id=stem)
                           for index, stem in enumerate(sorted(images))]
    else:
        records = load_annotations(source.annotations)
        checked_records = [validate_annotation(record, index, tolerance) for index, record in
                           enumerate(tqdm(records, desc=f"{source.split}: annotations",
                                          unit="rec", mininterval=0.5))]
        flag_duplicates(checked_records, records)
    targets = [checked for checked in checked_records if checked.image_id is not None]
    paths = [os.path.join(source.images, images.get(checked.image_id, checked.image_id + ".jpg"))
             for checked in targets]
    results = map_ordered(lambda path: inspect_image(path, full_decode), paths, jobs,
                          f"{source.split}: images")
    sizes = {}
    for checked, path, (width, height, problem) in zip(targets, paths, results):
        if problem is not None:
            checked.problems.append(problem)
        else:
            check_inside_image(checked, width, height, tolerance)
            sizes[checked.index] = (path, width, height)
    return checked_records, sizes


def make_record(checked, image_path, width, height, data_dir):
    """The JSON-lines record of one kept image (keypoints as floats, v as an int)."""
    return {
        "image_id": checked.image_id,
        "image_path": os.path.relpath(image_path, data_dir).replace(os.sep, "/"),
        "width": int(width),
        "height": int(height),
        "people": [{"name": name,
                    "keypoints": [[float(x), float(y), int(v)] for x, y, v in keypoints],
                    "box": [float(value) for value in box]}
                   for name, keypoints, box in checked.people],
    }


def _counts(checked_records):
    visibility = collections.Counter()
    for checked in checked_records:
        visibility.update(checked.visibility)
    return {"images": len(checked_records),
            "people": sum(checked.people_count for checked in checked_records),
            "visibility": {key: visibility.get(key, 0) for key in VISIBILITY_KEYS}}


def summarise(source, checked_records, full_decode, tolerance):
    """The summary dict: what was checked, kept and rejected (by reason)."""
    kept = [checked for checked in checked_records if not checked.problems]
    by_reason = collections.Counter(reason for checked in checked_records
                                    for reason, _ in checked.problems)
    checked_counts, kept_counts = _counts(checked_records), _counts(kept)
    unlabelled_people = sum(1 for checked in kept for _, keypoints, _ in checked.people
                            if np.all(keypoints[:, 2] == UNLABELLED))
    return {
        "split": source.split,
        "annotations": source.annotations,
        "images": source.images,
        "image_check": "full decode" if full_decode else "header and end marker",
        "tolerance": tolerance,
        "checked": checked_counts,
        "kept": dict(kept_counts, people_without_labelled_keypoints=unlabelled_people),
        "rejected": {"images": checked_counts["images"] - kept_counts["images"],
                     "people": checked_counts["people"] - kept_counts["people"],
                     "by_reason": dict(sorted(by_reason.items(), key=lambda item: (-item[1],
                                                                                   item[0])))},
    }


def format_summary(summary):
    """The summary as a readable table."""
    checked, kept, rejected = summary["checked"], summary["kept"], summary["rejected"]
    lines = [f"== {summary['split']}: {summary['annotations'] or '(image list only)'}",
             f"   images from {summary['images']} (checked: {summary['image_check']})",
             f"   {'':28}{'checked':>10}{'kept':>10}{'rejected':>10}"]
    for label, key in (("images", "images"), ("people", "people")):
        lines.append(f"   {label:28}{checked[key]:>10}{kept[key]:>10}{rejected[key]:>10}")
    for key, label in zip(VISIBILITY_KEYS, ("keypoints v=1 visible", "keypoints v=2 occluded",
                                            "keypoints v=3 unlabelled", "keypoints v invalid")):
        count = checked["visibility"][key]
        lines.append(f"   {label:28}{count:>10}{kept['visibility'][key]:>10}"
                     f"{count - kept['visibility'][key]:>10}")
    lines.append(f"   kept people with no labelled keypoint: "
                 f"{kept['people_without_labelled_keypoints']}")
    lines.append("   problems by reason (one rejected image can have several):"
                 if rejected["by_reason"] else "   no problems found")
    for reason, count in rejected["by_reason"].items():
        lines.append(f"     {reason:26}{count:>8}  {REASONS.get(reason, '')}")
    return "\n".join(lines)


def to_json_line(value):
    """One compact JSON line; NaN can never reach a record."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False) + "\n"


def write_jsonl(path, rows):
    """Write rows as JSON lines, atomically: the old file survives any failure mid-way."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(to_json_line(row))
            handle.flush()
            os.fsync(handle.fileno())


def process_source(source, cfg, jobs=1, full_decode=False, check_only=False):
    """Validate one source, print its summary and (unless check_only) write its three files.

    Returns the summary dict.
    """
    tolerance = float(cfg.annotation_tolerance)
    checked_records, sizes = validate_split(source, tolerance, jobs, full_decode)
    summary = summarise(source, checked_records, full_decode, tolerance)
    print(format_summary(summary))
    if check_only:
        return summary
    records = sorted((make_record(checked, *sizes[checked.index], cfg.data_dir)
                      for checked in checked_records if not checked.problems),
                     key=lambda record: record["image_id"])
    rejects = [{"image_id": checked.image_id, "reason": reason, "detail": detail}
               for checked in checked_records for reason, detail in checked.problems]
    base = os.path.join(cfg.records_dir, source.split)
    write_jsonl(base + ".jsonl", records)
    write_jsonl(base + "_rejects.jsonl", rejects)
    atomic_write_json(base + "_summary.json", summary, indent=2)
    print(f"   wrote {base}.jsonl ({len(records)} records), {base}_rejects.jsonl, "
          f"{base}_summary.json")
    return summary


# --------------------------------------------------------------------------------------------
# Official zips and folders.
# --------------------------------------------------------------------------------------------
def _is_unsafe_member(name):
    """A member name that would escape the target folder if it were used as a path."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]


def extraction_plan(names, target, release):
    """Map zip member names to destinations in the official layout under `target`.

    Members are matched by their file name (the annotation file) or their parent folder's name
    (images). Destinations are built from base names alone, so no member can be written outside
    `target`. Returns ([(member name, destination)], [unsafe member names]).
    """
    plan, unsafe = [], []
    for name in names:
        if name.endswith("/"):
            continue
        if _is_unsafe_member(name):
            unsafe.append(name)
            continue
        parts = name.replace("\\", "/").split("/")
        base, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
        if "__MACOSX" in parts or base.startswith("."):
            continue
        if release.annotations is not None and base == release.annotations:
            plan.append((name, os.path.join(target, base)))
        elif parent == release.images and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS:
            plan.append((name, os.path.join(target, release.images, base)))
    return plan, unsafe


def _extract_member(archive, name, destination):
    """Copy one member to its destination atomically; False (and a warning) if it is corrupt."""
    try:
        with archive.open(name) as member, atomic_path(destination) as temporary:
            with open(temporary, "wb") as handle:
                shutil.copyfileobj(member, handle, 1 << 20)
        return True
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        print(f"warning: member {name} is corrupt and was skipped ({error})", file=sys.stderr)
        return False


def extract_release(zip_path, data_dir, release):
    """Extract what a release needs (annotation file and images) into data_dir/<folder>/.

    Files already there with the member's size are skipped, so an interrupted extraction
    resumes. Returns the number of files written.
    """
    target = os.path.join(data_dir, release.folder)
    if os.path.exists(os.path.join(target, SYNTHETIC_MARKER)):
        raise SourceError(f"{target} holds a synthetic set but {zip_path} is the real release; "
                          "remove the synthetic folder first")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SourceError(f"{zip_path}: not a readable zip file ({error})") from error
    with archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        plan, unsafe = extraction_plan(list(sizes), target, release)
        for name in unsafe:
            print(f"warning: {zip_path}: unsafe member name {name!r} skipped", file=sys.stderr)
        todo = [(name, path) for name, path in plan
                if not (os.path.isfile(path) and os.path.getsize(path) == sizes[name])]
        with tqdm(total=sum(sizes[name] for name, _ in todo), unit="B", unit_scale=True,
                  desc=f"extracting {os.path.basename(zip_path)}", mininterval=0.5) as bar:
            written = 0
            for name, path in todo:
                written += _extract_member(archive, name, path)
                bar.update(sizes[name])
    print(f"{zip_path}: {written} files extracted, {len(plan) - len(todo)} already there")
    if not plan:
        print(f"warning: {zip_path}: no member named {release.annotations} or inside a folder "
              f"named {release.images}", file=sys.stderr)
    return written


def discover_sources(data_dir):
    """Extract the official zips found in data_dir and return a Source per split found.

    Returns (sources, looked_for) where looked_for lists the paths searched, for the message
    shown when nothing is found.
    """
    sources, looked_for = [], []
    for split, release in RELEASES.items():
        zip_path = os.path.join(data_dir, release.folder + ".zip")
        folder = os.path.join(data_dir, release.folder)
        images = os.path.join(folder, release.images)
        wanted = os.path.join(folder, release.annotations) if release.annotations else images
        looked_for.append(f"{zip_path}  or  {wanted}")
        if os.path.isfile(zip_path):
            extract_release(zip_path, data_dir, release)
        if release.annotations is None and os.path.isdir(images):
            sources.append(Source(split, None, images))
        elif release.annotations is not None and os.path.isfile(wanted):
            sources.append(Source(split, wanted, images))
    return sources, looked_for


def nothing_found_message(data_dir, looked_for):
    lines = [f"no AI Challenger data found in {data_dir}/. Looked for:"]
    lines += [f"  {path}" for path in looked_for]
    lines += ["Put the official zips into that folder, pass --annotations FILE --images DIR, "
              "or make a synthetic set:",
              "  python pre-process.py --synthetic 200 --seed 1 && python pre-process.py"]
    return "\n".join(lines)


def infer_split(*paths):
    """The split named in a file or folder name (train, val, test_a, test_b), or None."""
    for path in paths:
        name = os.path.basename(os.path.normpath(path or "")).lower()
        for split, pattern in (("test_a", r"test_?a"), ("test_b", r"test_?b"),
                               ("train", r"train"), ("val", r"val(idation)?")):
            if re.search(r"(?<![a-z])" + pattern + r"(?![a-z])", name):
                return split
    return None


# --------------------------------------------------------------------------------------------
# Synthetic people.
# --------------------------------------------------------------------------------------------
def _rotate(vector, degrees):
    """Rotate an (x, y) vector; with y pointing down, positive angles turn clockwise on screen."""
    angle = math.radians(degrees)
    cosine, sine = math.cos(angle), math.sin(angle)
    return np.array([vector[0] * cosine - vector[1] * sine, vector[0] * sine + vector[1] * cosine])


def _limb_angle(rng, ranges):
    """Draw an angle from one of several (probability, low, high) ranges, in degrees."""
    choice = rng.choice(len(ranges), p=[weight for weight, _, _ in ranges])
    return rng.uniform(ranges[choice][1], ranges[choice][2])


def sample_skeleton(rng, height, facing):
    """Joint positions (14, 2) float (x, y) of one person, neck at the origin, y down.

    height: standing height in pixels (head top to ankles). Segment lengths are human
    proportions of it with +-10 % jitter; the torso leans, the head tilts and every shoulder,
    elbow, hip and knee bends within human joint limits. facing = +1 faces the camera (the
    person's right side on the image's left), -1 faces away.
    """
    joints = np.zeros((NUM_JOINTS, 2))
    length = height * rng.uniform(0.9, 1.1, size=7)
    down = _rotate((0.0, 1.0), rng.uniform(-15, 15))
    side = np.array([down[1], -down[0]])  # Points to the image's right.
    width = rng.uniform(0.55, 1.0)  # Turning away from the camera narrows the body.
    right = -facing  # Image-side sign of the person's right.
    hip_centre = down * 0.30 * length[0]
    for sign, shoulder, hip in ((right, 0, 6), (-right, 3, 9)):
        joints[shoulder] = side * sign * 0.115 * length[1] * width + down * 0.03 * height
        joints[hip] = hip_centre + side * sign * 0.08 * length[1] * width
    joints[12] = _rotate(-down, rng.uniform(-20, 20)) * 0.183 * length[2]
    knee_bend = rng.choice((-1, 1))
    for sign, (shoulder, elbow, wrist), (hip, knee, ankle) in (
            (right, (0, 1, 2), (6, 7, 8)), (-right, (3, 4, 5), (9, 10, 11))):
        upper = _rotate(down, -sign * _limb_angle(rng, ((0.5, -15, 45), (0.35, 45, 110),
                                                        (0.15, 110, 170))))
        joints[elbow] = joints[shoulder] + upper * 0.165 * length[3]
        flexion = _limb_angle(rng, ((0.4, 0, 20), (0.6, 20, 145)))
        fore = _rotate(upper, rng.choice((-1, 1)) * flexion)
        joints[wrist] = joints[elbow] + fore * 0.145 * length[4]
        thigh = _rotate(down, -sign * _limb_angle(rng, ((0.8, -12, 35), (0.2, 35, 95))))
        joints[knee] = joints[hip] + thigh * 0.245 * length[5]
        shin = _rotate(thigh, knee_bend * _limb_angle(rng, ((0.5, 0, 15), (0.5, 15, 120))))
        joints[ankle] = joints[knee] + shin * 0.245 * length[6]
    return joints


def _random_colour(rng, saturation=(0.25, 1.0), value=(0.25, 1.0)):
    red, green, blue = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation),
                                           rng.uniform(*value))
    return (int(blue * 255), int(green * 255), int(red * 255))  # OpenCV's BGR


def _shade(colour, factor):
    return tuple(int(min(255, channel * factor)) for channel in colour)


SKIN_TONES = ((190, 210, 245), (150, 180, 225), (110, 150, 205), (85, 115, 165), (60, 85, 125),
              (45, 60, 90))


def sample_style(rng, height):
    """Colours (BGR) and widths (pixels) of one person's clothes and body parts."""
    skin = tuple(min(255, max(0, channel + int(rng.integers(-15, 16))))
                 for channel in SKIN_TONES[rng.integers(len(SKIN_TONES))])
    shirt, trousers = _random_colour(rng), _random_colour(rng)
    build = rng.uniform(0.8, 1.25)
    widths = {name: max(3, int(round(fraction * height * build))) for name, fraction in (
        ("upper_arm", 0.05), ("forearm", 0.042), ("thigh", 0.072), ("shin", 0.058),
        ("neck", 0.045), ("hand", 0.028), ("foot", 0.035))}
    return {
        "skin": skin, "hair": _random_colour(rng, (0.2, 0.8), (0.05, 0.45)), "shirt": shirt,
        "forearm": skin if rng.random() < 0.5 else _shade(shirt, 0.75),
        "trousers": trousers, "shin": skin if rng.random() < 0.25 else _shade(trousers, 0.8),
        "shoe": _random_colour(rng, (0.0, 0.6), (0.05, 0.5)), "widths": widths,
        "head": (0.068 * height, 0.05 * height * rng.uniform(0.9, 1.1)),
    }


def _line(start, end, width, colour, outline=True):
    """A thick line with round ends, with a darker outline one pixel wider on each side."""
    shapes = [("line", start, end, width + 2, _shade(colour, 0.45))] if outline else []
    return shapes + [("line", start, end, width, colour)]


def _disc(centre, radius, colour):
    return [("circle", centre, max(1, int(round(radius))), colour)]


def _leg_shapes(joints, style, facing):
    widths, shapes = style["widths"], []
    for hip, knee, ankle, sign in ((6, 7, 8, -facing), (9, 10, 11, facing)):
        shin = joints[ankle] - joints[knee]
        toe = joints[ankle] + _rotate(shin / (np.linalg.norm(shin) + 1e-6), -sign * 75) * (
            1.8 * widths["shin"])
        shapes += _line(joints[ankle], toe.round().astype(int), widths["foot"], style["shoe"])
        shapes += _line(joints[hip], joints[knee], widths["thigh"], style["trousers"])
        shapes += _line(joints[knee], joints[ankle], widths["shin"], style["shin"])
        # Darker discs on the joints make their centres, where the keypoints are, findable.
        shapes += _disc(joints[knee], 0.4 * widths["shin"], _shade(style["trousers"], 0.55))
        shapes += _disc(joints[ankle], 0.4 * widths["shin"], _shade(style["shoe"], 0.6))
    return shapes


def _torso_shapes(joints, style):
    corners = joints[[0, 3, 9, 6]].astype(float)
    centre = corners.mean(axis=0)
    outward = corners - centre
    outward /= np.linalg.norm(outward, axis=1, keepdims=True) + 1e-6
    polygon = (corners + outward * 0.5 * style["widths"]["upper_arm"]).round().astype(np.int32)
    shapes = [("polygon", polygon, style["shirt"]),
              ("outline", polygon, _shade(style["shirt"], 0.45))]
    for hip in (6, 9):
        shapes += _disc(joints[hip], 0.4 * style["widths"]["thigh"],
                        _shade(style["trousers"], 0.55))
    return shapes


def _head_shapes(joints, style, facing):
    """Neck and head: an ellipse whose far end is exactly the head-top keypoint."""
    neck, top = joints[13].astype(float), joints[12].astype(float)
    major, minor = style["head"]
    axis = (top - neck) / (np.linalg.norm(top - neck) + 1e-6)
    centre = (top - axis * major).round().astype(int)
    angle = math.degrees(math.atan2(axis[1], axis[0]))
    axes = (int(round(major)), int(round(minor)))
    shapes = _line(joints[13], centre, style["widths"]["neck"], style["skin"], outline=False)
    shapes += _disc(joints[13], 0.55 * style["widths"]["neck"], _shade(style["shirt"], 0.5))
    shapes.append(("ellipse", centre, axes, angle, 0, 360, _shade(style["hair"], 0.8)))
    if facing > 0:  # A face with eyes; seen from behind the head is all hair.
        shapes.append(("ellipse", centre, (max(1, axes[0] - 1), max(1, axes[1] - 1)), angle,
                       100, 260, style["skin"]))
        across = np.array([-axis[1], axis[0]])
        for sign in (-1, 1):
            eye = centre - axis * 0.15 * major + across * sign * 0.4 * minor
            shapes += _disc(eye.round().astype(int), 0.13 * minor, (30, 30, 30))
    shapes.append(("ellipse", centre, (max(1, axes[0] + 1), max(1, axes[1] + 1)), angle, 0, 360,
                   None))  # None: label map only, so the head's outline counts as the body.
    return shapes


def _arm_shapes(joints, style):
    widths, shapes = style["widths"], []
    for shoulder, elbow, wrist in ((0, 1, 2), (3, 4, 5)):
        shapes += _line(joints[shoulder], joints[elbow], widths["upper_arm"], style["shirt"])
        shapes += _line(joints[elbow], joints[wrist], widths["forearm"], style["forearm"])
        shapes += _disc(joints[wrist], widths["hand"], style["skin"])
        shapes += _disc(joints[wrist], 0.35 * widths["forearm"], _shade(style["skin"], 0.6))
        shapes += _disc(joints[elbow], 0.4 * widths["forearm"], _shade(style["forearm"], 0.55))
        shapes += _disc(joints[shoulder], 0.4 * widths["upper_arm"], _shade(style["shirt"], 0.55))
    return shapes


def person_shapes(joints, style, facing):
    """The drawing primitives of one person, back to front: legs, torso, head, then arms."""
    joints = np.asarray(joints).astype(int)
    return (_leg_shapes(joints, style, facing) + _torso_shapes(joints, style)
            + _head_shapes(joints, style, facing) + _arm_shapes(joints, style))


def _draw_shape(canvas, shape, colour, line_type):
    kind = shape[0]
    if kind == "line":
        cv2.line(canvas, tuple(map(int, shape[1])), tuple(map(int, shape[2])), colour,
                 int(shape[3]), line_type)
    elif kind == "circle":
        cv2.circle(canvas, tuple(map(int, shape[1])), int(shape[2]), colour, -1, line_type)
    elif kind == "polygon":
        cv2.fillPoly(canvas, [shape[1]], colour, line_type)
    elif kind == "outline":
        cv2.polylines(canvas, [shape[1]], True, colour, 2, line_type)
    elif kind == "ellipse":
        cv2.ellipse(canvas, tuple(map(int, shape[1])), tuple(shape[2]), shape[3], shape[4],
                    shape[5], colour, -1, line_type)


def draw_person(image, labels, shapes, number):
    """Draw shapes on the BGR image (anti-aliased) and `number` on the label map (uint8)."""
    for shape in shapes:
        if shape[-1] is not None:
            _draw_shape(image, shape, shape[-1], cv2.LINE_AA)
        _draw_shape(labels, shape, int(number), cv2.LINE_8)


def shapes_extent(shapes):
    """(x1, y1, x2, y2) float of everything the shapes cover."""
    points = []
    for shape in shapes:
        if shape[0] == "line":
            radius = shape[3] / 2.0
            for end in (shape[1], shape[2]):
                points += [np.asarray(end) - radius, np.asarray(end) + radius]
        elif shape[0] == "circle":
            points += [np.asarray(shape[1]) - shape[2], np.asarray(shape[1]) + shape[2]]
        elif shape[0] in ("polygon", "outline"):
            points += list(shape[1] - 1) + list(shape[1] + 1)
        elif shape[0] == "ellipse":
            points += list(cv2.ellipse2Poly(tuple(map(int, shape[1])), tuple(shape[2]),
                                            int(round(shape[3])), 0, 360, 10))
    points = np.asarray(points, dtype=float)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


# --------------------------------------------------------------------------------------------
# Synthetic scenes.
# --------------------------------------------------------------------------------------------
def _draw_distractor(rng, image):
    """One background object: a box, disc, blob, polygon or thin lines; never a limb shape."""
    height, width = image.shape[:2]
    size = min(height, width)
    centre = (int(rng.integers(width)), int(rng.integers(height)))
    colour = _random_colour(rng, (0.0, 1.0), (0.1, 1.0))
    kind = rng.integers(5)
    if kind == 0:
        corner = (centre[0] + int(rng.uniform(0.05, 0.5) * size),
                  centre[1] + int(rng.uniform(0.05, 0.5) * size))
        cv2.rectangle(image, centre, corner, colour, -1 if rng.random() < 0.7 else 2)
    elif kind == 1:
        cv2.circle(image, centre, int(rng.uniform(0.02, 0.15) * size), colour, -1, cv2.LINE_AA)
    elif kind == 2:
        axes = (int(rng.uniform(0.04, 0.3) * size), int(rng.uniform(0.04, 0.3) * size))
        cv2.ellipse(image, centre, axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
    elif kind == 3:
        points = np.asarray(centre) + rng.uniform(-0.2, 0.2, size=(rng.integers(3, 7), 2)) * size
        cv2.fillPoly(image, [points.astype(np.int32)], colour, cv2.LINE_AA)
    else:  # A few parallel thin lines: stripes, railings.
        step = rng.uniform(-0.06, 0.06, size=2) * size
        end = rng.uniform(-0.6, 0.6, size=2) * size
        for k in range(int(rng.integers(1, 6))):
            start = np.asarray(centre) + k * step
            cv2.line(image, tuple(start.astype(int)), tuple((start + end).astype(int)), colour,
                     int(rng.integers(1, 3)), cv2.LINE_AA)


def draw_background(rng, height, width):
    """A textured, cluttered BGR uint8 background: colour gradients, texture and objects."""
    coarse = rng.uniform(0, 255, size=(int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3))
    image = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    texture = rng.normal(0, rng.uniform(5, 30), size=(height // 8 + 2, width // 8 + 2, 3))
    image += cv2.resize(texture.astype(np.float32), (width, height),
                        interpolation=cv2.INTER_CUBIC)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 26))):
        _draw_distractor(rng, image)
    return image


def _place(rng, joints, centre_x, height, width):
    """Translate a skeleton so that its middle is at centre_x and it fits the image height
    (with some people cut by the frame); integer joint positions (14, 2)."""
    low, high = joints.min(axis=0), joints.max(axis=0)
    free = height - (high[1] - low[1])
    margin = 0.06 * height * (5 if rng.random() < 0.15 else 1)
    top = rng.uniform(min(0.0, free) - margin, max(0.0, free) + margin)
    offset = np.array([centre_x - (low[0] + high[0]) / 2, top - low[1]])
    middle = np.array([width / 2, height / 2]) - (low + high) / 2
    for _ in range(8):  # Move towards the middle until enough joints are in the frame.
        placed = np.rint(joints + offset).astype(int)
        inside = ((placed >= 0) & (placed < [width, height])).all(axis=1)
        if inside.sum() >= 8:
            break
        offset = (offset + middle) / 2
    return placed


def sample_people(rng, height, width):
    """1-6 people at varied scales, in drawing order (far/small first): [(joints, shapes)]."""
    count = int(rng.choice(len(PEOPLE_PROBABILITIES), p=PEOPLE_PROBABILITIES)) + 1
    heights = rng.uniform(0.35, 0.95 - 0.05 * (count - 1), size=count) * height
    slots = rng.permutation(count)
    people = []
    for person_height, slot in zip(heights, slots):
        facing = 1 if rng.random() < 0.75 else -1
        joints = sample_skeleton(rng, person_height, facing)
        joints = _place(rng, joints, width * (slot + rng.uniform(0.1, 0.9)) / count, height, width)
        people.append((joints, person_shapes(joints, sample_style(rng, person_height), facing)))
    order = np.argsort(heights * rng.uniform(0.85, 1.15, size=count), kind="stable")
    return [people[index] for index in order]


def annotate_person(joints, shapes, labels, number):
    """AIC keypoints (42 ints) and box (4 ints) of the person drawn as `number` on labels.

    A joint outside the frame is unlabelled (v = 3, x = y = 0); one whose pixel was painted by a
    later person is occluded (v = 2). The box is everything the shapes cover, clipped to the
    image, so it contains every labelled keypoint.
    """
    height, width = labels.shape
    keypoints = []
    for x, y in joints:
        if 0 <= x < width and 0 <= y < height:
            keypoints += [int(x), int(y), OCCLUDED if labels[y, x] > number else VISIBLE]
        else:
            keypoints += [0, 0, UNLABELLED]
    inside = np.asarray([(x, y) for x, y, v in zip(*[iter(keypoints)] * 3) if v != UNLABELLED])
    x1, y1, x2, y2 = shapes_extent(shapes)
    if inside.size:  # The extent covers the joints already; this only guards rounding.
        x1, y1 = min(x1, inside[:, 0].min()), min(y1, inside[:, 1].min())
        x2, y2 = max(x2, inside[:, 0].max()), max(y2, inside[:, 1].max())
    box = [int(np.clip(math.floor(x1), 0, width - 1)), int(np.clip(math.floor(y1), 0, height - 1)),
           int(np.clip(math.ceil(x2), 0, width - 1)), int(np.clip(math.ceil(y2), 0, height - 1))]
    return keypoints, box


def synthetic_image_id(seed, index):
    """A 40-hex-character id like AIC's, fixed by the seed and the image's index."""
    return hashlib.sha1(f"openpose-aic-synthetic:{seed}:{index}".encode()).hexdigest()


def synthetic_example(seed, index):
    """Draw synthetic image `index` of set `seed`: (image_id, JPEG bytes, AIC annotation).

    A 240..640-pixel image of random aspect ratio with a textured, cluttered background and 1-6
    articulated people drawn back to front, then sensor noise and sometimes a slight blur. All
    randomness comes from a generator seeded with (seed, index) alone.
    """
    rng = np.random.default_rng([seed, index])
    height = int(rng.integers(240, 481))
    width = int(np.clip(round(height * rng.uniform(0.6, 1.6)), 240, 640))
    image = draw_background(rng, height, width)
    labels = np.zeros((height, width), dtype=np.uint8)
    people = sample_people(rng, height, width)
    for number, (_, shapes) in enumerate(people, start=1):
        draw_person(image, labels, shapes, number)
    # Uniform integer sensor noise: several times faster to draw than Gaussian noise.
    amplitude = int(rng.integers(3, 16))
    noise = rng.integers(-amplitude, amplitude + 1, size=image.shape, dtype=np.int16)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    image_id = synthetic_image_id(seed, index)
    annotation = {"image_id": image_id, "keypoint_annotations": {}, "human_annotations": {}}
    for number, (joints, shapes) in enumerate(people, start=1):
        keypoints, box = annotate_person(joints, shapes, labels, number)
        annotation["keypoint_annotations"][f"human{number}"] = keypoints
        annotation["human_annotations"][f"human{number}"] = box
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SYNTHETIC_JPEG_QUALITY])
    return image_id, jpeg.tobytes(), annotation


def _write_synthetic_split(data_dir, split, indices, seed, jobs):
    """Write one split's images, annotation file and marker, then swap the folder into place."""
    release = RELEASES[split]
    final = os.path.join(data_dir, release.folder)
    if os.path.exists(os.path.join(data_dir, release.folder + ".zip")):
        raise SourceError(f"{data_dir} holds the real {release.folder}.zip; write synthetic data "
                          "elsewhere with --data_dir")
    if os.path.exists(final) and not os.path.exists(os.path.join(final, SYNTHETIC_MARKER)):
        raise SourceError(f"{final} exists and is not a synthetic set (no {SYNTHETIC_MARKER}); "
                          "move it away or choose another --data_dir")
    staging = os.path.join(data_dir, ".tmp-synthetic-" + release.folder)
    shutil.rmtree(staging, ignore_errors=True)
    images_dir = os.path.join(staging, release.images)
    os.makedirs(images_dir)

    def make(index):
        image_id, jpeg, annotation = synthetic_example(seed, index)
        with open(os.path.join(images_dir, image_id + ".jpg"), "wb") as handle:
            handle.write(jpeg)
        return annotation

    annotations = map_ordered(make, indices, jobs, f"synthetic {split}")
    atomic_write_text(os.path.join(staging, release.annotations), json.dumps(annotations))
    atomic_write_text(os.path.join(staging, SYNTHETIC_MARKER),
                      f"Synthetic AIC-format data (seed {seed}) written by pre-process.py.\n")
    retired = os.path.join(data_dir, ".tmp-retired-" + release.folder)
    shutil.rmtree(retired, ignore_errors=True)
    if os.path.exists(final):
        os.rename(final, retired)
    os.rename(staging, final)
    shutil.rmtree(retired, ignore_errors=True)
    return final


def write_synthetic(data_dir, count, seed, jobs=1):
    """Write `count` synthetic images (90 % train, at least one validation image)."""
    if count < 2:
        raise SourceError("--synthetic needs at least 2 images (train and validation)")
    validation = max(1, int(round(count * SYNTHETIC_VAL_FRACTION)))
    os.makedirs(data_dir, exist_ok=True)
    for split, indices in (("train", range(count - validation)),
                           ("val", range(count - validation, count))):
        folder = _write_synthetic_split(data_dir, split, indices, seed, jobs)
        print(f"{split}: {len(indices)} synthetic images written to {folder}")


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        description="Convert AI Challenger keypoint data (official zips or folders in data_dir, "
        "or --annotations/--images) into JSON-lines records under records_dir, validating every "
        "record; or write a synthetic data set in the official layout with --synthetic N.",
        epilog="Examples: python pre-process.py  |  python pre-process.py --synthetic 200 "
        "--seed 1  |  python pre-process.py --annotations A.json --images DIR --split val  |  "
        "python pre-process.py --annotations A.json --images /nonexistent --check-only")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="write N synthetic images (train + val) under data_dir and stop; "
                        "--seed chooses the set")
    parser.add_argument("--annotations", metavar="FILE", help="an AIC-format annotation file")
    parser.add_argument("--images", metavar="DIR", help="the folder of its images (alone: an "
                        "image list without people, as for test A/B)")
    parser.add_argument("--split", choices=sorted(RELEASES),
                        help="records file to write for --annotations/--images "
                        "(default: inferred from the file or folder name)")
    parser.add_argument("--check-only", "--check_only", dest="check_only", action="store_true",
                        help="validate and print the summary, write nothing")
    parser.add_argument("--full-decode", "--full_decode", dest="full_decode",
                        action="store_true", help="decode every image fully (slower; also "
                        "catches corruption inside the data)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="threads for image checks and synthetic drawing (default: CPUs)")
    return config.add_config_arguments(parser)


def sources_from_args(args, cfg, parser):
    """The sources the command line asks for: explicit ones, or those found in data_dir."""
    if args.annotations is None and args.images is None:
        if args.split is not None:
            parser.error("--split only applies to --annotations/--images")
        sources, looked_for = discover_sources(cfg.data_dir)
        if not sources:
            raise SourceError(nothing_found_message(cfg.data_dir, looked_for))
        return sources
    if args.synthetic is not None:
        parser.error("--synthetic cannot be combined with --annotations or --images")
    if args.images is None:
        parser.error("--annotations needs --images DIR (use a missing folder to check the "
                     "annotations alone; every image is then reported missing)")
    split = args.split or infer_split(args.annotations, args.images)
    if split is None and args.check_only:
        split = os.path.splitext(os.path.basename(args.annotations or args.images))[0]
    if split is None:
        parser.error("cannot tell the split from the file names; pass --split NAME, or "
                     "--check-only to validate without writing records")
    return [Source(split, args.annotations, args.images)]


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config.config_from_args(args)
    try:
        if args.synthetic is not None and args.annotations is None and args.images is None:
            write_synthetic(cfg.data_dir, args.synthetic, cfg.seed, args.jobs)
            return 0
        sources = sources_from_args(args, cfg, parser)
    except SourceError as error:
        print(f"pre-process.py: error: {error}", file=sys.stderr)
        return 1
    failures = 0
    for source in sources:
        try:
            process_source(source, cfg, args.jobs, args.full_decode, args.check_only)
        except SourceError as error:  # One unusable split must not stop the others.
            print(f"pre-process.py: error: {error}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
