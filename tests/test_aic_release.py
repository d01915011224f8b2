"""Tests of aic_release.py: zip members mapped to the official layout, extraction that resumes
and cleans up, image folders listed, split names read from file names, one-line source errors.
The conversion of an extracted release is tested in test_pre_process.py."""

import json
import os
import zipfile

import pytest

import aic_release
import utils
from config import AIC_RELEASES
from tests.test_pre_process import build_validation_zip


def test_extraction_plan_maps_by_name_and_skips_unsafe_members():
    release = AIC_RELEASES["train"]
    names = [f"x/{release.annotations}", f"a/b/{release.images}/1.jpg", f"{release.images}/2.JPG",
             "../../etc/passwd", f"{release.images}/../3.jpg", "C:/evil.jpg", "readme.txt"]
    plan, unsafe = aic_release.extraction_plan(names, "/target", release)
    assert plan == [(names[0], f"/target/{release.annotations}"),
                    (names[1], f"/target/{release.images}/1.jpg"),
                    (names[2], f"/target/{release.images}/2.JPG")]
    assert unsafe == ["../../etc/passwd", f"{release.images}/../3.jpg", "C:/evil.jpg"]


def test_two_members_for_one_file_name_both():
    release = AIC_RELEASES["val"]
    names = [f"a/{release.images}/1.jpg", f"b/{release.images}/1.jpg"]
    with pytest.raises(aic_release.SourceError, match=f"members {names[0]!r} and {names[1]!r}"):
        aic_release.extraction_plan(names, "/target", release)


def test_extraction_resumes_and_deletes_what_a_killed_one_left(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    release = build_validation_zip(data_dir, tmp_path)
    zip_path = str(data_dir / (release.folder + ".zip"))
    images = data_dir / release.folder / release.images
    assert aic_release.extract_release(zip_path, str(data_dir), release) == 3  # 2 images + JSON
    assert sorted(os.listdir(images)) == ["aaa.jpg", "bbb.jpg"]
    # A kill mid-extraction: one image missing, a half-written hidden file left behind.
    (images / "bbb.jpg").unlink()
    (images / ".tmp-abc.jpg").write_bytes(b"half")
    assert aic_release.extract_release(zip_path, str(data_dir), release) == 1
    assert sorted(os.listdir(images)) == ["aaa.jpg", "bbb.jpg"]
    assert aic_release.extract_release(zip_path, str(data_dir), release) == 0


def test_a_file_that_is_not_a_zip_is_a_source_error_naming_it(tmp_path):
    release = AIC_RELEASES["val"]
    zip_path = tmp_path / (release.folder + ".zip")
    zip_path.write_text("not a zip")
    with pytest.raises(aic_release.SourceError, match=f"{zip_path}: not a readable zip"):
        aic_release.extract_release(str(zip_path), str(tmp_path), release)
    assert not (tmp_path / release.folder).exists()


def test_a_folder_that_cannot_take_the_files_is_an_output_error(tmp_path):
    release = AIC_RELEASES["val"]
    zip_path = tmp_path / (release.folder + ".zip")
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr(f"{release.folder}/{release.annotations}", json.dumps([]))
    (tmp_path / release.folder).write_text("a file where the release folder should be")
    with pytest.raises(utils.OutputError, match=f"cannot extract {zip_path} there"):
        aic_release.extract_release(str(zip_path), str(tmp_path), release)


def test_scan_images_lists_images_by_id_and_prefers_jpg(tmp_path):
    for name in ("a.png", "a.jpg", "b.JPEG", ".tmp-c.jpg", "notes.txt", "d.tiff"):
        (tmp_path / name).write_bytes(b"x")
    assert aic_release.scan_images(str(tmp_path)) == {"a": "a.jpg", "b": "b.JPEG", "d": "d.tiff"}
    assert aic_release.scan_images(str(tmp_path / "absent")) == {}


def test_load_annotations_needs_a_json_list(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text('[{"image_id": "a"}]')
    assert aic_release.load_annotations(str(path)) == [{"image_id": "a"}]
    path.write_text("[{")
    with pytest.raises(aic_release.SourceError, match=f"{path}: cannot read the annotation"):
        aic_release.load_annotations(str(path))


@pytest.mark.parametrize("paths, split", [
    (("test_annotations_here", "latest_attributes"), None),
    (("x/keypoint_validation_annotations_20170911.json",), "val"),
    (("keypoint_train_images_20170902",), "train"),
    (("keypoint_test_b_images_20180103",), "test_b"),
    ((None, "ai_challenger_keypoint_test_a_20180103/"), "test_a"),
])
def test_infer_split_reads_the_official_names(paths, split):
    assert aic_release.infer_split(*paths) == split
