"""Tests of pre-process.py: the record validator, the image checks, the malformed-annotation file
end to end, official zips converted (their extraction is tested in test_aic_release.py), a
split's outputs changed together, and one-line errors with exit status.
The synthetic set's tests are in test_synthetic.py.

pre-process.py has a hyphen in its name, so it is imported from its path with importlib.
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest

from config import AIC_RELEASES
from tests.conftest import SimulatedKill, kill_after_renames, load_pre_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MALFORMED = os.path.join(ROOT, "tests", "data", "malformed_annotations.json")


pre_process = load_pre_process()

# A valid person in a 64 x 48 image: (x, y, v) for the 14 joints, left elbow occluded (v = 2)
# and left ankle unlabelled (v = 3).
PERSON = [20, 10, 1, 22, 20, 1, 24, 30, 1, 30, 10, 1, 32, 20, 2, 34, 30, 1, 22, 30, 1, 22, 38, 1,
          22, 44, 1, 30, 30, 1, 30, 38, 1, 0, 0, 3, 25, 6, 1, 25, 9, 1]
BOX = [15, 4, 38, 46]
WIDTH, HEIGHT = 64, 48


def record(image_id="img", keypoints=None, boxes=None):
    return {"image_id": image_id,
            "keypoint_annotations": {"human1": list(PERSON)} if keypoints is None else keypoints,
            "human_annotations": {"human1": list(BOX)} if boxes is None else boxes}


def with_value(position, value):
    values = list(PERSON)
    values[position] = value
    return record(keypoints={"human1": values})


def reasons(checked):
    return sorted(reason for reason, _ in checked.problems)


def write_jpeg(path, width=WIDTH, height=HEIGHT):
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    cv2.rectangle(image, (5, 5), (width // 2, height // 2), (10, 200, 30), -1)
    assert cv2.imwrite(str(path), image)


def run_main(*argv):
    """The script's exit status for this command line (expected errors become status 2)."""
    return pre_process.command_line([str(arg) for arg in argv])


# ----------------------------------------------------------------------------------------------
# The validator, one hand-made record at a time.
# ----------------------------------------------------------------------------------------------
def test_good_record_passes_with_its_keypoints():
    checked = pre_process.validate_annotation(record(), 0)
    assert checked.problems == []
    assert checked.image_id == "img"
    (name, keypoints, box), = checked.people
    assert name == "human1"
    assert keypoints.shape == (14, 3)
    assert keypoints[4].tolist() == [32, 20, 2] and keypoints[11].tolist() == [0, 0, 3]
    assert box.tolist() == BOX
    assert dict(checked.visibility) == {"1": 12, "2": 1, "3": 1}


@pytest.mark.parametrize("bad, reason", [
    ("a string", "not_an_object"),
    ([1, 2], "not_an_object"),
    ({"image_id": "x", "keypoint_annotations": {}}, "missing_key"),
    ({"keypoint_annotations": {}, "human_annotations": {}}, "missing_key"),
    (record(image_id="../up"), "bad_image_id"),
    (record(image_id=""), "bad_image_id"),
    (record(image_id=17), "bad_image_id"),
    (record(keypoints=[PERSON]), "malformed_annotations"),
    (dict(record(), human_annotations=None), "malformed_annotations"),
    (record(keypoints={"human1": PERSON[:-3]}), "wrong_keypoint_count"),
    (record(keypoints={"human1": "1 2 3"}), "wrong_keypoint_count"),
    (with_value(0, "20"), "not_a_number"),
    (with_value(1, float("nan")), "not_a_number"),
    (with_value(3, float("inf")), "not_a_number"),
    (with_value(4, True), "not_a_number"),
    (with_value(6, None), "not_a_number"),
    (with_value(2, 0), "bad_visibility"),
    (with_value(5, 4), "bad_visibility"),
    (with_value(8, 1.5), "bad_visibility"),
    (with_value(33, 5), "unlabelled_not_zero"),
    (with_value(0, 45), "keypoint_outside_box"),
    (with_value(1, 1), "keypoint_outside_box"),
    (record(keypoints={"human1": PERSON, "human2": PERSON}), "person_without_box"),
    (record(boxes={"human1": BOX, "human2": BOX}), "box_without_person"),
    (record(boxes={"human1": [38, 4, 15, 46]}), "malformed_box"),
    (record(boxes={"human1": [15, 4, 38, 4]}), "malformed_box"),
    (record(boxes={"human1": [15, 4, 38]}), "malformed_box"),
    (record(boxes={"human1": [15, "4", 38, 46]}), "not_a_number"),
    (record(boxes={"human1": [15, 4, 38, float("nan")]}), "not_a_number"),
])
def test_each_kind_of_bad_record_gets_its_reason(bad, reason):
    checked = pre_process.validate_annotation(bad, 7)
    assert reasons(checked) == [reason]
    assert all("record 7" in detail for _, detail in checked.problems)


def test_occluded_keypoint_may_leave_its_box_but_visible_one_only_within_tolerance():
    occluded_far = pre_process.validate_annotation(with_value(12, 60), 0)  # joint 4 has v = 2
    assert occluded_far.problems == []
    just_outside = list(PERSON)
    just_outside[0] = BOX[0] - 2  # exactly at the 2-pixel tolerance: kept
    assert pre_process.validate_annotation(record(keypoints={"human1": just_outside}), 0,
                                           tolerance=2.0).problems == []
    strict = pre_process.validate_annotation(record(keypoints={"human1": just_outside}), 0,
                                             tolerance=1.0)
    assert reasons(strict) == ["keypoint_outside_box"]


def test_person_without_labelled_keypoints_is_kept():
    checked = pre_process.validate_annotation(
        record(keypoints={"human1": [0, 0, 3] * 14}, boxes={"human1": [1, 1, 9, 9]}), 0)
    assert checked.problems == [] and len(checked.people) == 1


def test_keypoints_and_boxes_are_checked_against_the_image_size():
    inside = pre_process.validate_annotation(record(), 0)
    pre_process.check_inside_image(inside, WIDTH, HEIGHT)
    assert inside.problems == []
    small = pre_process.validate_annotation(record(), 0)
    pre_process.check_inside_image(small, 30, HEIGHT)  # x up to 34 and box x2 = 38 > 32
    assert reasons(small) == ["box_outside_image", "keypoint_outside_image"]
    edge = pre_process.validate_annotation(record(), 0)
    pre_process.check_inside_image(edge, 37, 45)  # within 2 px of both borders
    assert edge.problems == []


def test_duplicates_identical_keep_first_conflicting_drop_all():
    records = [record("a"), record("a"), record("b"),
               record("b", boxes={"human1": [1, 1, 50, 47]})]
    checked = [pre_process.validate_annotation(item, index) for index, item in enumerate(records)]
    pre_process.flag_duplicates(checked, records)
    assert [reasons(item) for item in checked] == [
        [], ["duplicate_image_id"], ["duplicate_image_id"], ["duplicate_image_id"]]


def test_inspect_image_reads_size_and_says_what_a_bad_file_is(tmp_path):
    good, png = tmp_path / "good.jpg", tmp_path / "good.png"
    write_jpeg(good, 40, 30)
    cv2.imwrite(str(png), np.zeros((12, 21, 3), np.uint8))
    png_named_jpg = tmp_path / "png.jpg"
    png_named_jpg.write_bytes(png.read_bytes())
    assert pre_process.inspect_image(str(good)) == (40, 30, None)
    assert pre_process.inspect_image(str(good), full_decode=True) == (40, 30, None)
    assert pre_process.inspect_image(str(png)) == (21, 12, None)
    assert pre_process.inspect_image(str(png_named_jpg)) == (21, 12, None)  # a good PNG
    truncated, notes, empty = tmp_path / "cut.jpg", tmp_path / "notes.jpg", tmp_path / "empty.jpg"
    truncated.write_bytes(good.read_bytes()[:-20])
    notes.write_text("these are my notes, not an image")
    empty.write_bytes(b"")
    bad_header = tmp_path / "header.jpg"
    bad_header.write_bytes(b"\xff\xd8\xff" + b"garbage" * 10 + b"\xff\xd9")
    for path, reason, words in (
            (truncated, "truncated_image", "JPEG data is truncated"),
            (notes, "not_an_image", "not an image: a text file"),
            (empty, "unreadable_image", "empty"),
            (bad_header, "unreadable_image", "JPEG header cannot be read"),
            (tmp_path / "none.jpg", "missing_image", "not found")):
        for full_decode in (False, True):
            width, height, problem = pre_process.inspect_image(str(path), full_decode)
            assert (width, height, problem[0]) == (0, 0, reason) and str(path) in problem[1]
            assert full_decode or words in problem[1]


def damaged_jpeg(path):
    """A JPEG whose middle 400 bytes are zeroed: its end marker is intact."""
    rng = np.random.default_rng(0)
    picture = cv2.GaussianBlur(rng.uniform(0, 255, (120, 160, 3)).astype(np.uint8), (0, 0), 3)
    data = bytearray(cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    middle = len(data) // 2
    data[middle:middle + 400] = bytes(400)
    path.write_bytes(bytes(data))


def test_full_decode_rejects_a_damaged_jpeg_that_the_header_check_passes(tmp_path):
    damaged_jpeg(tmp_path / "damaged.jpg")
    assert pre_process.inspect_image(str(tmp_path / "damaged.jpg")) == (160, 120, None)
    width, height, (reason, detail) = pre_process.inspect_image(str(tmp_path / "damaged.jpg"),
                                                                full_decode=True)
    assert reason == "damaged_image" and "damaged JPEG data" in detail


def test_full_decode_run_rejects_the_damaged_image_and_keeps_a_png_named_jpg(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    damaged_jpeg(images / "damaged.jpg")
    cv2.imwrite(str(images / "png.png"), np.full((HEIGHT, WIDTH, 3), 90, np.uint8))
    os.rename(images / "png.png", images / "png.jpg")
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps([record("damaged"), record("png")]))
    records_dir = tmp_path / "records"
    assert run_main("--annotations", annotations, "--images", images, "--split", "val",
                    "--full-decode", "--data_dir", tmp_path, "--records_dir", records_dir) == 0
    assert [item["image_id"] for item in read_lines(records_dir / "val.jsonl")] == ["png"]
    assert [item["reason"] for item in read_lines(records_dir / "val_rejects.jsonl")] == [
        "damaged_image"]


# ----------------------------------------------------------------------------------------------
# The malformed-annotation file, end to end.
# ----------------------------------------------------------------------------------------------
EXPECTED_KEPT = ["boundary_ok", "duplicate_identical", "good_two_people", "good_unlabelled_person"]
EXPECTED_REJECTS = {
    None: ["bad_image_id", "not_an_object", "not_an_object"],
    "no_boxes": ["missing_key"],
    "annotations_not_object": ["malformed_annotations"],
    "wrong_count": ["wrong_keypoint_count"],
    "string_value": ["not_a_number"], "nan_value": ["not_a_number"],
    "inf_value": ["not_a_number"], "bool_value": ["not_a_number"],
    "null_value": ["not_a_number"], "box_string": ["not_a_number"],
    "visibility_zero": ["bad_visibility"], "visibility_four": ["bad_visibility"],
    "visibility_fraction": ["bad_visibility"],
    "unlabelled_not_zero": ["unlabelled_not_zero"],
    "keypoint_outside_image": ["keypoint_outside_image"],
    "keypoint_outside_box": ["keypoint_outside_box"],
    "person_without_box": ["person_without_box"],
    "box_without_person": ["box_without_person"],
    "box_reversed": ["malformed_box"], "box_three_values": ["malformed_box"],
    "box_outside_image": ["box_outside_image"],
    "duplicate_identical": ["duplicate_image_id"],
    "duplicate_conflicting": ["duplicate_image_id", "duplicate_image_id"],
    "missing_image": ["missing_image"], "unreadable_image": ["unreadable_image"],
    "truncated_image": ["truncated_image"], "empty_image": ["unreadable_image"],
}


@pytest.fixture
def malformed_images(tmp_path):
    """The images of the malformed file: 64 x 48 JPEGs, with bad files for the bad-image ids."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    with open(MALFORMED, encoding="utf-8") as handle:
        ids = {item["image_id"] for item in json.load(handle)
               if isinstance(item, dict) and isinstance(item.get("image_id"), str)}
    for image_id in ids - {"missing_image", "../escape"}:
        write_jpeg(images / f"{image_id}.jpg")
    # A JPEG signature, then bytes that are no JPEG header: Pillow cannot read it.
    (images / "unreadable_image.jpg").write_bytes(b"\xff\xd8\xff" + b"garbage" * 10 + b"\xff\xd9")
    good = (images / "good_two_people.jpg").read_bytes()
    (images / "truncated_image.jpg").write_bytes(good[:200])
    (images / "empty_image.jpg").write_bytes(b"")
    return images


def malformed_run(tmp_path, images, records_dir=None, *options):
    records_dir = records_dir or tmp_path / "records"
    code = run_main("--annotations", MALFORMED, "--images", images, "--split", "val",
                    "--data_dir", tmp_path / "data", "--records_dir", records_dir, "--jobs", 2,
                    *options)
    return code, records_dir


def read_lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_malformed_file_rejects_each_bad_record_with_its_reason(tmp_path, malformed_images):
    code, records_dir = malformed_run(tmp_path, malformed_images)
    assert code == 0
    kept = read_lines(records_dir / "val.jsonl")
    assert [item["image_id"] for item in kept] == EXPECTED_KEPT  # sorted by image_id
    rejects = read_lines(records_dir / "val_rejects.jsonl")
    assert all(set(item) == {"image_id", "reason", "detail"} and item["detail"] for item in rejects)
    found = {}
    for item in rejects:
        found.setdefault(item["image_id"], []).append(item["reason"])
    assert {key: sorted(value) for key, value in found.items()} == EXPECTED_REJECTS
    assert any("../escape" in item["detail"] for item in rejects)


def test_malformed_file_records_and_summary_counts(tmp_path, malformed_images):
    _, records_dir = malformed_run(tmp_path, malformed_images)
    kept = {item["image_id"]: item for item in read_lines(records_dir / "val.jsonl")}
    two = kept["good_two_people"]
    assert (two["width"], two["height"]) == (WIDTH, HEIGHT)
    assert two["image_path"] == "images/good_two_people.jpg"
    assert [person["name"] for person in two["people"]] == ["human1", "human2"]
    assert two["people"][0]["keypoints"][4:6] == [[32.0, 20.0, 2], [34.0, 30.0, 1]]
    assert two["people"][1]["keypoints"][5] == [50.0, 30.0, 2]
    assert two["people"][0]["box"] == [15.0, 4.0, 38.0, 46.0]
    with open(records_dir / "val_summary.json", encoding="utf-8") as handle:
        summary = json.load(handle)
    # 34 records; 33 people in the records whose keypoint_annotations is an object.
    assert summary["checked"]["images"] == 34 and summary["checked"]["people"] == 33
    assert summary["kept"]["images"] == 4 and summary["kept"]["people"] == 5
    assert summary["rejected"]["images"] == 30 and summary["rejected"]["people"] == 28
    # Kept: PERSON (12/1/1) three times, PERSON with an occluded wrist (11/2/1), 14 x v = 3.
    assert summary["kept"]["visibility"] == {"1": 47, "2": 5, "3": 18, "invalid": 0}
    assert summary["kept"]["people_without_labelled_keypoints"] == 1
    expected = {}
    for values in EXPECTED_REJECTS.values():
        for reason in values:
            expected[reason] = expected.get(reason, 0) + 1
    assert summary["rejected"]["by_reason"] == expected


def test_rerun_gives_identical_bytes(tmp_path, malformed_images):
    _, records_dir = malformed_run(tmp_path, malformed_images)
    names = ["val.jsonl", "val_rejects.jsonl", "val_summary.json"]
    first = [(records_dir / name).read_bytes() for name in names]
    malformed_run(tmp_path, malformed_images)
    assert [(records_dir / name).read_bytes() for name in names] == first


def test_existing_outputs_survive_a_failure_mid_write(tmp_path, malformed_images, monkeypatch):
    records_dir = tmp_path / "records"
    records_dir.mkdir()
    (records_dir / "val.jsonl").write_text("old records\n")
    calls = []

    def failing(value):
        calls.append(value)
        if len(calls) == 2:
            raise RuntimeError("disk trouble")
        return json.dumps(value) + "\n"

    monkeypatch.setattr(pre_process, "to_json_line", failing)
    with pytest.raises(RuntimeError, match="disk trouble"):
        malformed_run(tmp_path, malformed_images)
    assert (records_dir / "val.jsonl").read_text() == "old records\n"
    assert sorted(os.listdir(records_dir)) == ["val.jsonl"]  # no temporary file left behind


OUTPUT_NAMES = ["val.jsonl", "val_rejects.jsonl", "val_summary.json"]




@pytest.fixture
def two_inputs(tmp_path):
    """Images and two annotation files: "old" (one good record) and "new" (two good records and
    one whose image is missing), so that the visible files tell which run wrote them."""
    images = tmp_path / "small_images"
    images.mkdir()
    for image_id in ("a", "b"):
        write_jpeg(images / f"{image_id}.jpg")
    inputs = {"images": images}
    versions = {"old": [record("a")], "new": [record("a"), record("b"), record("c")]}
    for name, records in versions.items():
        inputs[name] = tmp_path / f"{name}.json"
        inputs[name].write_text(json.dumps(records))
    return inputs


def small_run(inputs, which, records_dir):
    return run_main("--annotations", inputs[which], "--images", inputs["images"], "--split",
                    "val", "--data_dir", inputs["images"].parent, "--records_dir", records_dir)


def visible_run(records_dir):
    """"old" or "new": the run whose three files are visible; fails if they are of two runs."""
    with open(records_dir / "val_summary.json", encoding="utf-8") as handle:
        summary = json.load(handle)
    assert summary["kept"]["images"] == len(read_lines(records_dir / "val.jsonl"))
    assert sum(summary["rejected"]["by_reason"].values()) == len(
        read_lines(records_dir / "val_rejects.jsonl"))
    return {1: "old", 3: "new"}[summary["checked"]["images"]]


def killed_run(inputs, records_dir, monkeypatch, kill_point):
    """Run on the "new" input, killed after its `kill_point`-th rename; True if it finished."""
    with monkeypatch.context() as patch:
        kill_after_renames(patch, kill_point)
        try:
            small_run(inputs, "new", records_dir)
            return True
        except SimulatedKill:
            return False


@pytest.mark.parametrize("layout", ["links", "plain files"])
def test_killed_runs_leave_the_old_or_the_new_outputs_and_a_rerun_recovers(
        tmp_path, two_inputs, monkeypatch, layout):
    """Kill a run after each of its renames in turn, then its rerun after each of its renames in
    turn: the visible three files are always of one run, and a finished rerun leaves no trace."""
    small_run(two_inputs, "old", tmp_path / "old")
    start = tmp_path / "start"
    if layout == "links":
        shutil.copytree(tmp_path / "old", start, symlinks=True)
    else:  # The plain files that earlier versions wrote.
        start.mkdir()
        for name in OUTPUT_NAMES:
            (start / name).write_bytes((tmp_path / "old" / name).read_bytes())
    first_kills = 0
    while True:
        first_kills += 1
        killed = tmp_path / f"killed{first_kills}"
        shutil.copytree(start, killed, symlinks=True)
        finished = killed_run(two_inputs, killed, monkeypatch, first_kills)
        assert visible_run(killed) in ("old", "new")
        if finished:
            break
        second_kills = 0
        while True:
            second_kills += 1
            rerun = tmp_path / f"rerun{first_kills}_{second_kills}"
            shutil.copytree(killed, rerun, symlinks=True)
            finished = killed_run(two_inputs, rerun, monkeypatch, second_kills)
            assert visible_run(rerun) in ("old", "new")
            if finished:
                break
        assert visible_run(rerun) == "new"
        names = sorted(os.listdir(rerun))  # no leftover of the killed runs
        assert names[:1] == [".val"] and re.fullmatch(r"\.val\.\w+", names[1])
        assert names[2:] == OUTPUT_NAMES
    # Two renames switch a version in; the files of the older layout take another five.
    assert first_kills == {"links": 3, "plain files": 8}[layout]
    assert oct(os.stat(killed / "val.jsonl").st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_leftovers_of_killed_runs_are_deleted_at_start(tmp_path, malformed_images):
    records_dir = tmp_path / "records"
    malformed_run(tmp_path, malformed_images)
    (records_dir / ".tmp-val-abc").mkdir()
    (records_dir / ".tmp-val-abc" / "val.jsonl").write_text("half")
    (records_dir / ".tmp-x.json").write_text("half")
    (records_dir / ".val.unused1").mkdir()  # a version no link points to
    (records_dir / "notes.txt").write_text("the user's own file")
    malformed_run(tmp_path, malformed_images)
    names = sorted(os.listdir(records_dir))
    assert names[0] == ".val" and len(names) == 6 and ".val.unused1" not in names
    assert names[2:] == ["notes.txt"] + OUTPUT_NAMES


@pytest.mark.parametrize("failure", ["read-only", "full", "not a folder"])
def test_an_unwritable_records_dir_is_one_line_and_status_2(
        tmp_path, two_inputs, monkeypatch, capsys, failure):
    records_dir = tmp_path / "records"
    small_run(two_inputs, "old", records_dir)
    before = {name: (records_dir / name).read_bytes() for name in OUTPUT_NAMES}
    listing = sorted(os.listdir(records_dir))
    capsys.readouterr()
    if failure == "read-only":  # Root may write to a read-only mode, so the file system says no.
        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(os, "mkdir", refuse)
        reason = "Read-only file system"
    elif failure == "full":  # A full disk shows when the data is flushed.
        def refuse(descriptor):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", refuse)
        reason = "No space left on device"
    else:
        (tmp_path / "a_file").write_text("not a folder")
        records_dir = tmp_path / "a_file" / "records"
        reason = "Not a directory"
    code = small_run(two_inputs, "new", records_dir)
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[-1].startswith(f"pre-process.py: error: {records_dir}: ") and reason in err[-1]
    if failure != "not a folder":
        assert {name: (records_dir / name).read_bytes() for name in OUTPUT_NAMES} == before
        assert sorted(os.listdir(records_dir)) == listing


def test_a_missing_annotation_file_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "keypoint_validation_annotations.json"
    result = subprocess.run([sys.executable, "pre-process.py", "--annotations", str(missing),
                             "--images", str(tmp_path), "--records_dir", str(tmp_path / "r")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"pre-process.py: error: {missing}: cannot read the annotation "
                             "file (No such file or directory)\n")


def test_no_record_kept_is_status_1_and_keeps_the_earlier_outputs(
        tmp_path, malformed_images, capsys):
    records_dir = tmp_path / "records"
    malformed_run(tmp_path, malformed_images)
    before = {name: (records_dir / name).read_bytes() for name in OUTPUT_NAMES}
    capsys.readouterr()
    code, _ = malformed_run(tmp_path, tmp_path / "no_images")  # every image is missing
    assert code == 1
    err = capsys.readouterr().err
    assert "error: split val: all 34 images were rejected" in err and "nothing written" in err
    assert {name: (records_dir / name).read_bytes() for name in OUTPUT_NAMES} == before
    empty = tmp_path / "keypoint_validation_annotations.json"
    empty.write_text("[]")
    assert run_main("--annotations", empty, "--images", malformed_images,
                    "--records_dir", records_dir) == 1
    assert f"{empty}: the annotation file holds no records" in capsys.readouterr().err
    assert run_main("--annotations", empty, "--images", malformed_images, "--check-only") == 1


def test_annotations_without_images_are_all_missing_but_counted(tmp_path, capsys):
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps([record("a"), record("b", keypoints={
        "human1": PERSON, "human2": PERSON}, boxes={"human1": BOX, "human2": BOX})]))
    code = run_main("--annotations", annotations, "--images", tmp_path / "absent", "--check-only",
                    "--records_dir", tmp_path / "records")
    assert code == 0
    out = capsys.readouterr().out
    assert re.search(r"images\s+2\s+0\s+2", out) and re.search(r"people\s+3\s+0\s+3", out)
    assert re.search(r"missing_image\s+2", out)
    assert not (tmp_path / "records").exists()  # --check-only writes nothing


def test_unreadable_annotation_file_is_an_error_naming_it(tmp_path, capsys):
    annotations = tmp_path / "keypoint_validation_annotations.json"
    annotations.write_text('{"not": "a list"}')
    assert run_main("--annotations", annotations, "--images", tmp_path,
                    "--records_dir", tmp_path / "records") == 2
    assert capsys.readouterr().err == (f"pre-process.py: error: {annotations}: expected a JSON "
                                       "list of records, got a dict\n")


def test_annotations_need_images_and_a_known_split(tmp_path):
    records = ("--records_dir", tmp_path / "records")
    with pytest.raises(SystemExit):
        run_main("--annotations", MALFORMED, *records)
    with pytest.raises(SystemExit):  # "malformed_annotations" names no split
        run_main("--annotations", MALFORMED, "--images", tmp_path / "pictures", *records)
    assert not (tmp_path / "records").exists()
    with pytest.raises(SystemExit):
        run_main("--synthetic", 4, "--images", tmp_path / "pictures", *records)


# ----------------------------------------------------------------------------------------------
# Official zips and folders.
# ----------------------------------------------------------------------------------------------
def build_validation_zip(data_dir, tmp_path):
    release = AIC_RELEASES["val"]
    annotations = [record("aaa"), record("bbb", keypoints={"human1": PERSON},
                                         boxes={"human1": [14, 3, 40, 47]})]
    write_jpeg(tmp_path / "image.jpg")
    zip_path = data_dir / (release.folder + ".zip")
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr(f"{release.folder}/{release.annotations}", json.dumps(annotations))
        for image_id in ("bbb", "aaa"):
            archive.write(tmp_path / "image.jpg",
                          f"{release.folder}/{release.images}/{image_id}.jpg")
        archive.writestr(f"../{release.images}/evil.jpg", b"escape attempt")
        archive.writestr(f"/{release.images}/absolute.jpg", b"escape attempt")
        archive.writestr(f"__MACOSX/{release.images}/._aaa.jpg", b"resource fork")
    return release


def test_zip_is_extracted_safely_and_converted(tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    release = build_validation_zip(data_dir, tmp_path)
    assert run_main("--data_dir", data_dir, "--records_dir", tmp_path / "records") == 0
    assert capsys.readouterr().err.count("unsafe member name") == 2
    records = read_lines(tmp_path / "records" / "val.jsonl")
    assert [item["image_id"] for item in records] == ["aaa", "bbb"]
    assert records[0]["image_path"] == f"{release.folder}/{release.images}/aaa.jpg"
    extracted = sorted(os.listdir(data_dir / release.folder / release.images))
    assert extracted == ["aaa.jpg", "bbb.jpg"]
    assert not (tmp_path / release.images).exists() and not os.path.exists(f"/{release.images}")


def test_a_zip_with_two_annotation_files_is_an_error_naming_both(tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    release = AIC_RELEASES["val"]
    first = f"{release.folder}/{release.annotations}"
    second = f"copy/{release.annotations}"
    with zipfile.ZipFile(data_dir / (release.folder + ".zip"), "w") as archive:
        archive.writestr(first, json.dumps([record("aaa")]))
        archive.writestr(second, json.dumps([record("bbb")]))
    assert run_main("--data_dir", data_dir, "--records_dir", tmp_path / "records") == 2
    err = capsys.readouterr().err
    assert f"members {first!r} and {second!r} are both {release.annotations}" in err
    assert not (data_dir / release.folder).exists()  # nothing extracted


def test_nothing_found_says_where_it_looked_in_one_line(tmp_path, capsys):
    assert run_main("--data_dir", tmp_path, "--records_dir", tmp_path / "records") == 2
    err = capsys.readouterr().err
    assert "ai_challenger_keypoint_train_20170909.zip" in err and "--synthetic" in err
    assert err.count("\n") == 1 and str(tmp_path) in err
