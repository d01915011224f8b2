#!/usr/bin/env python3
"""Turn AI Challenger keypoint releases into validated per-image records, or write a synthetic set.

    python pre-process.py                       # every split found in data_dir (zips or folders)
    python pre-process.py --annotations A.json --images DIR --split val
    python pre-process.py --synthetic 200 --seed 1   # a synthetic set in the official layout

For each split it writes, under records_dir, ``{split}.jsonl`` (one JSON line per kept image,
sorted by image_id), ``{split}_rejects.jsonl`` (one line per problem) and ``{split}_summary.json``
(the counts, also printed as a table). A record with any problem is dropped as a whole image.
The three files change together: each is a symbolic link through ``.{split}`` into a hidden
folder, and one rename switches them, so a killed run leaves the old three or the new three.
The same input gives the same bytes. Exit status: 0 when every split kept records; 1 when a
split kept none (nothing is written for it); 2 when a source or records_dir is unusable (one
line on stderr names the file and the problem). Finding and extracting the official releases is
aic_release.py's; drawing the synthetic set is synthetic.py's.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import math
import os
import re
import shutil
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

import config
import synthetic
import utils
from aic_release import Source, SourceError, discover_sources, infer_split, load_annotations, \
    scan_images
from config import AIC_RELEASES, JOINT_NAMES, NUM_JOINTS, OCCLUDED, UNLABELLED, VISIBLE
from utils import OutputError

ANNOTATION_KEYS = ("image_id", "keypoint_annotations", "human_annotations")
DEFAULT_TOLERANCE = 2.0  # Pixels; scripts pass cfg.annotation_tolerance.
VISIBILITY_KEYS = ("1", "2", "3", "invalid")

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
    "missing_image": "the image file does not exist or cannot be opened",
    "not_an_image": "the file is not an image (text, an archive, an unknown format)",
    "truncated_image": "the image data is cut short (no end marker)",
    "damaged_image": "the JPEG data is damaged (--full-decode)",
    "unreadable_image": "the image file is empty or its data cannot be decoded",
}
# utils.ImageError.reason -> the reject reason above.
IMAGE_PROBLEMS = {"missing": "missing_image", "not_an_image": "not_an_image",
                  "truncated": "truncated_image", "damaged": "damaged_image",
                  "empty": "unreadable_image", "unreadable": "unreadable_image"}


class NoRecordsError(RuntimeError):
    """A split ended with no usable record; nothing is written for it (exit status 1)."""


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
def inspect_image(path, full_decode=False):
    """Check one image file; return (width, height, None), or (0, 0, (reason, detail)).

    By default only the file's first and last bytes and its header are read: utils tells what
    the file is by its content (a PNG named .jpg is a good PNG) and catches a missing end
    marker, and Pillow reads the size without decoding pixels. full_decode decodes the pixels
    with utils.decode_image(strict=True), which also catches damaged JPEG data behind an intact
    end marker. Sizes ignore EXIF orientation, as the data generator's decoder does. Never
    raises: any error of one file becomes that file's problem, so one bad image cannot stop the run.
    """
    kind = None
    try:
        size, head, tail = utils.read_file_ends(path)
        if size == 0:
            raise utils.ImageError(f"{path}: image file is empty", "empty")
        kind = utils.check_image_ends(path, head, tail)
        if full_decode:
            height, width = utils.decode_image(path, strict=True).shape[:2]
        else:
            with Image.open(path) as image:
                width, height = image.size
    except utils.ImageError as error:
        return 0, 0, (IMAGE_PROBLEMS.get(error.reason, "unreadable_image"), str(error))
    except Exception as error:  # Whatever Pillow raises on a bad header (even its bomb guard).
        return 0, 0, ("unreadable_image", f"{path}: {kind} header cannot be read ({error})")
    return int(width), int(height), None


# --------------------------------------------------------------------------------------------
# One split: annotations + images -> records, rejects, summary.
# --------------------------------------------------------------------------------------------
def _check_records(source, records, images, tolerance):
    """Validate the annotation records (None for a test set: then list its images): [Checked]."""
    if records is None:
        return [Checked(index, image_id=stem) for index, stem in enumerate(sorted(images))]
    checked_records = [validate_annotation(record, index, tolerance) for index, record in
                       enumerate(tqdm(records, desc=f"{source.split}: annotations",
                                      unit="rec", mininterval=0.5))]
    flag_duplicates(checked_records, records)
    return checked_records


def validate_split(source, tolerance, jobs, full_decode):
    """Validate every record of `source` and its image.

    Returns (checked records in annotation order, {index: (image path, width, height)}).
    """
    # The annotation file is read first, so that a bad one fails before 210,000 files are listed.
    records = None if source.annotations is None else load_annotations(source.annotations)
    if not os.path.isdir(source.images):
        print(f"warning: image folder {source.images} does not exist: every image is missing",
              file=sys.stderr)
    images = scan_images(source.images)
    checked_records = _check_records(source, records, images, tolerance)
    targets = [checked for checked in checked_records if checked.image_id is not None]
    paths = [os.path.join(source.images, images.get(checked.image_id, checked.image_id + ".jpg"))
             for checked in targets]
    results = utils.map_ordered(lambda path: inspect_image(path, full_decode), paths, jobs,
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


def _no_records_message(source, summary):
    """Why a split has nothing to write, in one line."""
    if summary["checked"]["images"] == 0:
        return (f"{source.images}: no images found" if source.annotations is None
                else f"{source.annotations}: the annotation file holds no records")
    return (f"split {source.split}: all {summary['checked']['images']} images were rejected "
            f"(most for: {', '.join(list(summary['rejected']['by_reason'])[:3])})")


def process_source(source, cfg, jobs=1, full_decode=False, check_only=False):
    """Validate one source, print its summary and (unless check_only) write its three files.

    Returns the summary dict. Raises SourceError for an unusable source, NoRecordsError (with
    nothing written) when no record is usable, OutputError when records_dir fails.
    """
    tolerance = float(cfg.annotation_tolerance)
    checked_records, sizes = validate_split(source, tolerance, jobs, full_decode)
    summary = summarise(source, checked_records, full_decode, tolerance)
    print(format_summary(summary))
    # Checking the annotations alone (--check-only without the image folder), missing images
    # are expected and do not make a record unusable.
    ignored = {"missing_image"} if check_only and not os.path.isdir(source.images) else set()
    if not any(all(reason in ignored for reason, _ in checked.problems)
               for checked in checked_records):
        suffix = "" if check_only else "; nothing written, earlier outputs of the split kept"
        raise NoRecordsError(_no_records_message(source, summary) + suffix)
    if check_only:
        return summary
    records = sorted((make_record(checked, *sizes[checked.index], cfg.data_dir)
                      for checked in checked_records if not checked.problems),
                     key=lambda record: record["image_id"])
    rejects = [{"image_id": checked.image_id, "reason": reason, "detail": detail}
               for checked in checked_records for reason, detail in checked.problems]
    write_outputs(cfg.records_dir, source.split, records, rejects, summary)
    base = os.path.join(cfg.records_dir, source.split)
    print(f"   wrote {base}.jsonl ({len(records)} records), {base}_rejects.jsonl, "
          f"{base}_summary.json")
    return summary


# --------------------------------------------------------------------------------------------
# A split's three files, changed together.
# --------------------------------------------------------------------------------------------
def output_names(split):
    """The file names of a split's records, rejects and summary in records_dir."""
    return (f"{split}.jsonl", f"{split}_rejects.jsonl", f"{split}_summary.json")


def prepare_records_dir(records_dir):
    """Create records_dir, delete what killed runs left there and check that it takes files.

    Runs before the long validation, so that a read-only folder fails at once. Raises
    OutputError naming the folder and the reason.
    """
    try:
        os.makedirs(records_dir, exist_ok=True)
        utils.remove_leftovers(records_dir)
        names = os.listdir(records_dir)
        used = {os.readlink(os.path.join(records_dir, name)) for name in names
                if os.path.islink(os.path.join(records_dir, name))}
        for name in names:  # Version folders that no link points to: a kill left them.
            if re.fullmatch(r"\.(train|val|test_a|test_b)\.\w+", name) and name not in used:
                shutil.rmtree(os.path.join(records_dir, name))
        os.rmdir(utils.new_hidden_folder(records_dir, "probe"))
    except OSError as error:
        raise OutputError(f"{records_dir}: cannot write records there "
                          f"({utils.os_reason(error)})") from error


def to_json_line(value):
    """One compact JSON line; NaN can never reach a record."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False) + "\n"


def write_outputs(records_dir, split, records, rejects, summary):
    """Write a split's three files so that a reader sees the old three or the new three.

    They are written into a new hidden folder that utils.publish_group switches in. Raises
    OutputError (read-only or full folder) with the old files untouched; an error, unlike a
    kill, also removes the new folder.
    """
    try:
        staging = utils.new_hidden_folder(records_dir, split)
        try:
            paths = [os.path.join(staging, name) for name in output_names(split)]
            utils.write_lines(paths[0], (to_json_line(record) for record in records))
            utils.write_lines(paths[1], (to_json_line(reject) for reject in rejects))
            utils.write_lines(paths[2], [json.dumps(summary, indent=2) + "\n"])
            utils.publish_group(records_dir, split, staging, output_names(split))
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as error:
        raise OutputError(f"{records_dir}: cannot write the outputs of split {split} "
                          f"({utils.os_reason(error)})") from error


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)  # Reading Config's fields takes a second: do it once a process.
def build_parser():
    parser = argparse.ArgumentParser(
        description="Convert AI Challenger keypoint data (official zips or folders in data_dir, "
        "or --annotations/--images) into JSON-lines records under records_dir, validating every "
        "record; or write a synthetic data set in the official layout with --synthetic N. "
        "Exit status 0: done; 1: a split kept no record; 2: an unusable input or records_dir.",
        epilog="Examples: python pre-process.py  |  python pre-process.py --synthetic 200 "
        "--seed 1  |  python pre-process.py --annotations A.json --images DIR --split val  |  "
        "python pre-process.py --annotations A.json --images /nonexistent --check-only")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="write N synthetic images (train + val) under data_dir and stop; "
                        "--seed chooses the set")
    parser.add_argument("--annotations", metavar="FILE", help="an AIC-format annotation file")
    parser.add_argument("--images", metavar="DIR", help="the folder of its images (alone: an "
                        "image list without people, as for test A/B)")
    parser.add_argument("--split", choices=sorted(AIC_RELEASES),
                        help="records file to write for --annotations/--images "
                        "(default: inferred from the file or folder name)")
    parser.add_argument("--check-only", "--check_only", dest="check_only", action="store_true",
                        help="validate and print the summary, write nothing")
    parser.add_argument("--full-decode", "--full_decode", dest="full_decode",
                        action="store_true", help="decode every image fully (slower; also "
                        "catches damaged JPEG data)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="threads for image checks and synthetic drawing (default: CPUs)")
    return config.add_config_arguments(parser)


def parse_arguments(argv=None):
    """(args, cfg) of a command line; argparse exits with status 2 on a wrong combination.

    With --annotations/--images, args.split is set (given, inferred from the names, or for
    --check-only the file's name).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = args.annotations is not None or args.images is not None
    if args.synthetic is not None and explicit:
        parser.error("--synthetic cannot be combined with --annotations or --images")
    if args.split is not None and not explicit:
        parser.error("--split only applies to --annotations/--images")
    if args.annotations is not None and args.images is None:
        parser.error("--annotations needs --images DIR (use a missing folder to check the "
                     "annotations alone; every image is then reported missing)")
    if explicit:
        args.split = args.split or infer_split(args.annotations, args.images)
        if args.split is None and args.check_only:
            args.split = os.path.splitext(os.path.basename(args.annotations or args.images))[0]
        if args.split is None:
            parser.error("cannot tell the split from the file names; pass --split NAME, or "
                         "--check-only to validate without writing records")
    return args, config.config_from_args(args)


def run_synthetic(args, cfg):
    """Write the synthetic set; raises OutputError if data_dir cannot take it."""
    try:
        folders = synthetic.write_synthetic(cfg.data_dir, args.synthetic, cfg.seed, args.jobs)
    except OSError as error:
        raise OutputError(f"{cfg.data_dir}: cannot write the synthetic set there "
                          f"({utils.os_reason(error)})") from error
    for split, folder in folders.items():
        print(f"{split}: synthetic images written to {folder}")


def main(args, cfg):
    """Do what the command line asks; return the exit status (see the module's docstring).

    A split whose source is unusable or that keeps no record is reported in one line and the
    other splits go on; EXPECTED_ERRORS that stop the whole run are raised.
    """
    if args.synthetic is not None:
        run_synthetic(args, cfg)
        return 0
    if args.annotations is None and args.images is None:
        sources = discover_sources(cfg.data_dir)
    else:
        sources = [Source(args.split, args.annotations, args.images)]
    if not args.check_only:
        prepare_records_dir(cfg.records_dir)
    status = 0
    for source in sources:
        try:
            process_source(source, cfg, args.jobs, args.full_decode, args.check_only)
        except (SourceError, NoRecordsError) as error:
            print(f"pre-process.py: error: {error}", file=sys.stderr, flush=True)
            status = max(status, 2 if isinstance(error, SourceError) else 1)
    return status


# Failures a user can cause and fix: one line on stderr, exit status 2, no traceback.
EXPECTED_ERRORS = (SourceError, OutputError, synthetic.SyntheticError, OSError)


def command_line(argv=None):
    """The script: run main and turn an expected failure into one line and status 2."""
    args, cfg = parse_arguments(argv)
    try:
        return main(args, cfg)
    except EXPECTED_ERRORS as error:
        print(f"pre-process.py: error: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(command_line())
