"""Tests of synthetic.py: the set's format and determinism, its conversion by pre-process.py
without a reject, and a set replaced whole (a run killed between the splits is refused)."""

import errno
import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest

import synthetic
from config import AIC_RELEASES
from tests.conftest import SimulatedKill, kill_after_renames, load_pre_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pre_process = load_pre_process()


def tree_bytes(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, root)] = handle.read()
    return files


def read_lines(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def annotation_ids(root, split):
    release = AIC_RELEASES[split]
    with open(os.path.join(root, release.folder, release.annotations), encoding="utf-8") as handle:
        return [item["image_id"] for item in json.load(handle)]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_synthetic(str(root), 6, seed=5, jobs=1)
    return root


def test_same_seed_same_bytes_whatever_the_threads(synthetic_dir, tmp_path):
    synthetic.write_synthetic(str(tmp_path / "again"), 6, seed=5, jobs=2)
    synthetic.write_synthetic(str(tmp_path / "other"), 6, seed=6, jobs=1)
    first = tree_bytes(synthetic_dir)
    assert len(first) == 6 + 2 * 2  # 6 images, 2 annotation files, 2 markers
    assert tree_bytes(tmp_path / "again") == first
    other = tree_bytes(tmp_path / "other")
    assert set(other) != set(first)


def check_annotation(item, image_path):
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


def test_set_is_in_the_official_layout_and_format(synthetic_dir):
    for split, count in (("train", 5), ("val", 1)):
        release = AIC_RELEASES[split]
        with open(os.path.join(synthetic_dir, release.folder, release.annotations),
                  encoding="utf-8") as handle:
            annotations = json.load(handle)
        assert isinstance(annotations, list) and len(annotations) == count
        for item in annotations:
            check_annotation(item, os.path.join(synthetic_dir, release.folder, release.images,
                                                item["image_id"] + ".jpg"))
    marker = (synthetic_dir / AIC_RELEASES["val"].folder / synthetic.SYNTHETIC_MARKER).read_text()
    assert marker.splitlines()[-1] == "set: seed=5 train=5 val=1"


def test_set_converts_without_a_single_reject(synthetic_dir, tmp_path):
    records_dir = tmp_path / "records"
    assert pre_process.command_line(["--data_dir", str(synthetic_dir),
                                     "--records_dir", str(records_dir)]) == 0
    for split, count in (("train", 5), ("val", 1)):
        assert len(read_lines(records_dir / f"{split}.jsonl")) == count
        assert read_lines(records_dir / f"{split}_rejects.jsonl") == []


def test_keypoints_are_marked_occluded_and_out_of_frame():
    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:10] = 1  # person 1
    labels[8:10, 8:10] = 2  # person 2, drawn later, covers (8..9, 8..9)
    joints = np.tile([[6, 6]], (14, 1))
    joints[1] = (9, 9)  # under person 2
    joints[2] = (-1, 6)  # left of the frame
    joints[3] = (6, 20)  # below the frame
    shapes = [("circle", (7, 7), 3, (0, 0, 0))]
    keypoints, box = synthetic.annotate_person(joints, shapes, labels, 1)
    triples = np.asarray(keypoints).reshape(14, 3)
    assert triples[0].tolist() == [6, 6, 1] and triples[1].tolist() == [9, 9, 2]
    assert triples[2].tolist() == [0, 0, 3] and triples[3].tolist() == [0, 0, 3]
    assert box == [4, 4, 10, 10]


def test_refuses_to_overwrite_real_data(tmp_path, capsys):
    real = tmp_path / AIC_RELEASES["train"].folder
    real.mkdir()
    (real / "keep.txt").write_text("real data")
    assert pre_process.command_line(["--synthetic", "4", "--data_dir", str(tmp_path)]) == 2
    assert "not a synthetic set" in capsys.readouterr().err
    assert (real / "keep.txt").read_text() == "real data"
    assert sorted(os.listdir(tmp_path)) == [real.name]  # nothing written beside it


@pytest.mark.parametrize("failure", ["read-only", "full"])
def test_an_unwritable_data_dir_is_one_line_and_status_2(tmp_path, monkeypatch, capsys, failure):
    synthetic.write_synthetic(str(tmp_path), 2, seed=1)
    before = tree_bytes(tmp_path)
    error_number = errno.EROFS if failure == "read-only" else errno.ENOSPC

    def refuse(*args, **kwargs):
        raise OSError(error_number, os.strerror(error_number))

    # Root may write to a read-only mode, so the file system's answer is simulated: a read-only
    # one refuses the new folder, a full one the image data.
    if failure == "read-only":
        monkeypatch.setattr(os, "mkdir", refuse)
    else:
        monkeypatch.setattr(synthetic, "synthetic_example", lambda seed, index: refuse())
    capsys.readouterr()
    assert pre_process.command_line(["--synthetic", "4", "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"pre-process.py: error: {tmp_path}: cannot write the synthetic set "
                       f"there ({os.strerror(error_number)})")
    assert tree_bytes(tmp_path) == before  # the old set, and no leftover
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_a_synthetic_split_beside_a_real_one_is_refused(synthetic_dir, tmp_path):
    shutil.copytree(synthetic_dir / AIC_RELEASES["val"].folder,
                    tmp_path / AIC_RELEASES["val"].folder)
    (tmp_path / AIC_RELEASES["train"].folder).mkdir()  # real data has no marker
    with pytest.raises(synthetic.SyntheticError, match="not one whole set"):
        synthetic.check_complete(str(tmp_path))




def test_a_run_killed_between_the_splits_is_refused_and_a_rerun_recovers(
        tmp_path, capsys, monkeypatch):
    # The new set's training split holds image 2, the old set's validation image: a mix of the
    # two would validate on a training image.
    old = tmp_path / "old"
    synthetic.write_synthetic(str(old), 3, seed=1)
    kill_points = 0
    while True:
        kill_points += 1
        data_dir = tmp_path / f"data{kill_points}"
        shutil.copytree(old, data_dir)
        with monkeypatch.context() as patch:
            kill_after_renames(patch, kill_points)
            try:
                synthetic.write_synthetic(str(data_dir), 4, seed=1)
                finished = True
            except SimulatedKill:
                finished = False
        capsys.readouterr()
        status = pre_process.command_line(["--data_dir", str(data_dir), "--records_dir",
                                           str(data_dir / "records"), "--check-only"])
        error = capsys.readouterr().err
        if status == 0:  # Readers see one whole set, whichever.
            assert not set(annotation_ids(data_dir, "val")) & set(annotation_ids(data_dir, "train"))
        else:
            assert status == 2 and re.search("not one whole set|no AI Challenger data", error)
        if finished:
            break
        synthetic.write_synthetic(str(data_dir), 4, seed=1)  # the rerun
        assert not [name for name in os.listdir(data_dir) if name.startswith(".tmp-")]
        synthetic.check_complete(str(data_dir))
        assert len(annotation_ids(data_dir, "train")) == 3
    assert kill_points == 5  # 4 renames: two folders moved aside, two moved in
