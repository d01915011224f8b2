"""Tests for utils.py: atomic writes and image reading."""

import cv2
import numpy as np
import pytest

import utils


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "out" / "a.json"
    utils.atomic_write_json(str(path), {"a": 1})
    utils.atomic_write_json(str(path), {"a": 2})
    assert path.read_text().strip() == '{"a": 2}'
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with utils.atomic_path(str(path)) as temporary:
            assert temporary.endswith(".txt")
            with open(temporary, "w") as handle:
                handle.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_read_image_converts_grey_and_four_channels_to_rgb(tmp_path):
    grey = np.full((5, 7), 100, np.uint8)
    bgra = np.zeros((5, 7, 4), np.uint8)
    bgra[..., 2] = 200  # Red in OpenCV's BGRA order.
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "bgra.png"), bgra)
    assert utils.read_image_rgb(str(tmp_path / "grey.png")).shape == (5, 7, 3)
    rgb = utils.read_image_rgb(str(tmp_path / "bgra.png"))
    assert rgb.shape == (5, 7, 3) and rgb[0, 0, 0] == 200 and rgb[0, 0, 2] == 0


def test_read_image_names_the_file_on_missing_corrupt_or_truncated(tmp_path):
    with pytest.raises(utils.ImageError, match="not found"):
        utils.read_image_rgb(str(tmp_path / "nothing.jpg"))
    (tmp_path / "text.jpg").write_text("not an image at all")
    with pytest.raises(utils.ImageError, match="text.jpg"):
        utils.read_image_rgb(str(tmp_path / "text.jpg"))
    ok, encoded = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "cut.jpg").write_bytes(encoded.tobytes()[:-10])
    with pytest.raises(utils.ImageError, match="truncated|readable"):
        utils.read_image_rgb(str(tmp_path / "cut.jpg"))


def test_aic_keypoint_round_trip():
    flat = list(range(42))
    keypoints = utils.keypoints_from_aic(flat)
    assert keypoints.shape == (14, 3) and keypoints[1, 0] == 3
    assert utils.keypoints_to_aic(keypoints) == flat
    with pytest.raises(ValueError, match="42"):
        utils.keypoints_from_aic(flat[:-1])
