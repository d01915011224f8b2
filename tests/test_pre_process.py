"""Tests of pre-process.py: the record validator, the malformed-annotation file end to end, zip
reading, atomic outputs, and the synthetic data set (format and determinism).

pre-process.py has a hyphen in its name, so it is imported from its path with importlib.
"""

import importlib.util
import json
import os
import re
import sys
import zipfile

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MALFORMED = os.path.join(ROOT, "tests", "data", "malformed_annotations.json")


def _load_pre_process():
    if "pre_process" in sys.modules:
        return sys.modules["pre_process"]
    spec = importlib.util.spec_from_file_location("pre_process",
                                                  os.path.join(ROOT, "pre-process.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["pre_process"] = module  # dataclasses look their module up here.
    spec.loader.exec_module(module)
    return module


pre_process = _load_pre_process()

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
    return pre_process.main([str(arg) for arg in argv])


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


def test_inspect_image_reads_size_and_catches_bad_files(tmp_path):
    good, png = tmp_path / "good.jpg", tmp_path / "good.png"
    write_jpeg(good, 40, 30)
    cv2.imwrite(str(png), np.zeros((12, 21, 3), np.uint8))
    truncated, garbage, empty = tmp_path / "cut.jpg", tmp_path / "junk.jpg", tmp_path / "empty.jpg"
    truncated.write_bytes(good.read_bytes()[:-20])
    garbage.write_bytes(b"this is not an image" + b"\xff\xd9")
    empty.write_bytes(b"")
    assert pre_process.inspect_image(str(good)) == (40, 30, None)
    assert pre_process.inspect_image(str(good), full_decode=True) == (40, 30, None)
    assert pre_process.inspect_image(str(png)) == (21, 12, None)
    for path, reason in ((truncated, "truncated_image"), (garbage, "unreadable_image"),
                         (empty, "unreadable_image"), (tmp_path / "none.jpg", "missing_image")):
        width, height, problem = pre_process.inspect_image(str(path))
        assert problem[0] == reason and str(path) in problem[1]


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
    (images / "unreadable_image.jpg").write_bytes(b"GIF89a garbage" + b"\xff\xd9")
    good = (images / "good_two_people.jpg").read_bytes()
    (images / "truncated_image.jpg").write_bytes(good[:200])
    (images / "empty_image.jpg").write_bytes(b"")
    return images


def malformed_run(tmp_path, images):
    records_dir = tmp_path / "records"
    code = run_main("--annotations", MALFORMED, "--images", images, "--split", "val",
                    "--data_dir", tmp_path / "data", "--records_dir", records_dir, "--jobs", 2)
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
                    "--records_dir", tmp_path / "records") == 1
    assert str(annotations) in capsys.readouterr().err


def test_annotations_need_images_and_a_known_split(tmp_path):
    records = ("--records_dir", tmp_path / "records")
    with pytest.raises(SystemExit):
        run_main("--annotations", MALFORMED, *records)
    with pytest.raises(SystemExit):  # "malformed_annotations" names no split
        run_main("--annotations", MALFORMED, "--images", tmp_path / "pictures", *records)
    assert not (tmp_path / "records").exists()
    with pytest.raises(SystemExit):
        run_main("--synthetic", 4, "--images", tmp_path / "pictures", *records)
    assert pre_process.infer_split("test_annotations_here", "latest_attributes") is None
    assert pre_process.infer_split("x/keypoint_validation_annotations_20170911.json") == "val"
    assert pre_process.infer_split("keypoint_train_images_20170902") == "train"
    assert pre_process.infer_split("keypoint_test_b_images_20180103") == "test_b"


# ----------------------------------------------------------------------------------------------
# Official zips and folders.
# ----------------------------------------------------------------------------------------------
def build_validation_zip(data_dir, tmp_path):
    release = pre_process.RELEASES["val"]
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
    # A second run finds everything extracted already and writes nothing new.
    assert pre_process.extract_release(str(data_dir / (release.folder + ".zip")), str(data_dir),
                                       release) == 0


def test_extraction_plan_maps_by_name_and_skips_unsafe_members():
    release = pre_process.RELEASES["train"]
    names = [f"x/{release.annotations}", f"a/b/{release.images}/1.jpg", f"{release.images}/2.JPG",
             "../../etc/passwd", f"{release.images}/../3.jpg", "C:/evil.jpg", "readme.txt"]
    plan, unsafe = pre_process.extraction_plan(names, "/target", release)
    assert plan == [(names[0], f"/target/{release.annotations}"),
                    (names[1], f"/target/{release.images}/1.jpg"),
                    (names[2], f"/target/{release.images}/2.JPG")]
    assert unsafe == ["../../etc/passwd", f"{release.images}/../3.jpg", "C:/evil.jpg"]


def test_nothing_found_says_where_it_looked(tmp_path, capsys):
    assert run_main("--data_dir", tmp_path, "--records_dir", tmp_path / "records") == 1
    err = capsys.readouterr().err
    assert "ai_challenger_keypoint_train_20170909.zip" in err and "--synthetic" in err


# ----------------------------------------------------------------------------------------------
# Synthetic data.
# ----------------------------------------------------------------------------------------------
def tree_bytes(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root)] = open(path, "rb").read()
    return files


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    pre_process.write_synthetic(str(root), 6, seed=5, jobs=1)
    return root


def test_synthetic_same_seed_same_bytes(synthetic_dir, tmp_path):
    pre_process.write_synthetic(str(tmp_path / "again"), 6, seed=5, jobs=2)
    pre_process.write_synthetic(str(tmp_path / "other"), 6, seed=6, jobs=1)
    first = tree_bytes(synthetic_dir)
    assert len(first) == 6 + 2 * 2  # 6 images, 2 annotation files, 2 markers
    assert tree_bytes(tmp_path / "again") == first
    other = tree_bytes(tmp_path / "other")
    assert set(other) != set(first)


def load_synthetic(root, split):
    release = pre_process.RELEASES[split]
    with open(os.path.join(root, release.folder, release.annotations), encoding="utf-8") as handle:
        return release, json.load(handle)


def check_synthetic_annotation(item, image_path):
    assert set(item) == {"image_id", "keypoint_annotations", "human_annotations"}
    assert re.fullmatch(r"[0-9a-f]{40}", item["image_id"])
    image = cv2.imread(image_path)
    height, width = image.shape[:2]
    assert 240 <= height <= 480 and 240 <= width <= 640
    assert set(item["keypoint_annotations"]) == set(item["human_annotations"])
    assert 1 <= len(item["keypoint_annotations"]) <= 6
    for name, values in item["keypoint_annotations"].items():
        assert re.fullmatch(r"human[1-9]\d*", name)
        assert len(values) == 42 and all(type(value) is int for value in values)
        keypoints = np.asarray(values).reshape(14, 3)
        box = item["human_annotations"][name]
        assert len(box) == 4 and all(type(value) is int for value in box)
        assert 0 <= box[0] < box[2] <= width - 1 and 0 <= box[1] < box[3] <= height - 1
        assert set(keypoints[:, 2]) <= {1, 2, 3}
        assert np.all(keypoints[keypoints[:, 2] == 3, :2] == 0)
        labelled = keypoints[keypoints[:, 2] != 3]
        assert len(labelled) >= 1
        assert np.all((labelled[:, 0] >= box[0]) & (labelled[:, 0] <= box[2]))
        assert np.all((labelled[:, 1] >= box[1]) & (labelled[:, 1] <= box[3]))


def test_synthetic_set_is_in_the_official_layout_and_format(synthetic_dir):
    for split, count in (("train", 5), ("val", 1)):
        release, annotations = load_synthetic(synthetic_dir, split)
        assert isinstance(annotations, list) and len(annotations) == count
        for item in annotations:
            image_path = os.path.join(synthetic_dir, release.folder, release.images,
                                      item["image_id"] + ".jpg")
            check_synthetic_annotation(item, image_path)


def test_synthetic_set_converts_without_a_single_reject(synthetic_dir, tmp_path):
    records_dir = tmp_path / "records"
    assert run_main("--data_dir", synthetic_dir, "--records_dir", records_dir) == 0
    for split, count in (("train", 5), ("val", 1)):
        assert len(read_lines(records_dir / f"{split}.jsonl")) == count
        assert read_lines(records_dir / f"{split}_rejects.jsonl") == []


def test_synthetic_keypoints_are_marked_occluded_and_out_of_frame():
    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:10] = 1  # person 1
    labels[8:10, 8:10] = 2  # person 2, drawn later, covers (8..9, 8..9)
    joints = np.tile([[6, 6]], (14, 1))
    joints[1] = (9, 9)  # under person 2
    joints[2] = (-1, 6)  # left of the frame
    joints[3] = (6, 20)  # below the frame
    shapes = [("circle", (7, 7), 3, (0, 0, 0))]
    keypoints, box = pre_process.annotate_person(joints, shapes, labels, 1)
    triples = np.asarray(keypoints).reshape(14, 3)
    assert triples[0].tolist() == [6, 6, 1] and triples[1].tolist() == [9, 9, 2]
    assert triples[2].tolist() == [0, 0, 3] and triples[3].tolist() == [0, 0, 3]
    assert box == [4, 4, 10, 10]


def test_synthetic_refuses_to_overwrite_real_data(tmp_path, capsys):
    real = tmp_path / pre_process.RELEASES["train"].folder
    real.mkdir()
    (real / "keep.txt").write_text("real data")
    assert run_main("--synthetic", 4, "--data_dir", tmp_path) == 1
    assert "not a synthetic set" in capsys.readouterr().err
    assert (real / "keep.txt").read_text() == "real data"
