"""Tests for utils.py: atomic writes, output checks, image reading, threads in order, memory."""

import errno
import os
import sys
import time

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


def test_check_writable_names_the_file_and_the_reason(tmp_path, monkeypatch):
    utils.check_writable(str(tmp_path / "new" / "out.json"))  # a missing folder is made
    assert os.listdir(tmp_path / "new") == []  # and nothing is left in it
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(utils.OutputError, match=f"{tmp_path}/a_file/out.json: cannot write this "
                                                f"file \\({tmp_path}/a_file is not a folder\\)"):
        utils.check_writable(str(tmp_path / "a_file" / "out.json"))
    with pytest.raises(utils.OutputError, match="Is a directory"):
        utils.check_writable(str(tmp_path / "new"))

    def read_only(*args, **kwargs):  # Root writes where permissions say no; a file system not.
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(utils.tempfile, "mkstemp", read_only)
    with pytest.raises(utils.OutputError, match="out.json: .*Read-only file system"):
        utils.check_writable(str(tmp_path / "out.json"))


def test_write_json_output_turns_a_full_disk_into_one_line_and_keeps_the_old_file(
        tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old")

    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(utils.os, "fsync", full)
    with pytest.raises(utils.OutputError) as raised:
        utils.write_json_output(str(path), [1, 2])
    assert str(raised.value) == f"{path}: cannot write this file (No space left on device)"
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_map_ordered_keeps_the_order_on_several_threads():
    def slow_first(value):  # The first chunk finishes last.
        if value < utils.CHUNK_SIZE:
            time.sleep(0.001)
        return value * value

    items = range(3 * utils.CHUNK_SIZE + 5)
    assert utils.map_ordered(slow_first, items, 3, "test") == [value * value for value in items]


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


def jpeg_bytes(seed=0):
    rng = np.random.default_rng(seed)
    picture = cv2.GaussianBlur(rng.uniform(0, 255, (120, 160, 3)).astype(np.uint8), (0, 0), 3)
    return cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def test_content_decides_the_format_and_the_message_says_what_a_bad_file_is(tmp_path):
    # A PNG named .jpg is a PNG: it decodes, and is not called truncated for lacking FF D9.
    png = cv2.imencode(".png", np.full((4, 6, 3), 9, np.uint8))[1].tobytes()
    (tmp_path / "png.jpg").write_bytes(png)
    assert utils.decode_image(str(tmp_path / "png.jpg")).shape == (4, 6, 3)
    (tmp_path / "notes.jpg").write_text("hello, these are my notes")
    with pytest.raises(utils.ImageError, match="notes.jpg: not an image: a text file") as info:
        utils.decode_image(str(tmp_path / "notes.jpg"))
    assert info.value.reason == "not_an_image"
    (tmp_path / "cut.png").write_bytes(png[:-12])
    with pytest.raises(utils.ImageError, match="PNG data is truncated"):
        utils.decode_image(str(tmp_path / "cut.png"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(utils.ImageError, match="empty"):
        utils.decode_image(str(tmp_path / "empty.jpg"))
    # RIFF begins WebP images and WAV sounds alike; only the first is an image.
    webp = cv2.imencode(".webp", np.full((4, 6, 3), 9, np.uint8))[1].tobytes()
    (tmp_path / "image.webp").write_bytes(webp)
    assert utils.decode_image(str(tmp_path / "image.webp")).shape == (4, 6, 3)
    (tmp_path / "sound.webp").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28))
    with pytest.raises(utils.ImageError, match="sound.webp: not an image"):
        utils.decode_image(str(tmp_path / "sound.webp"))


def test_strict_decode_catches_a_damaged_jpeg_with_an_intact_end_marker(tmp_path):
    data = bytearray(jpeg_bytes())
    middle = len(data) // 2
    data[middle:middle + 400] = bytes(400)  # zeros over the entropy-coded data
    assert data[-2:] == b"\xff\xd9"
    path = str(tmp_path / "damaged.jpg")
    with open(path, "wb") as handle:
        handle.write(bytes(data))
    assert utils.decode_image(path).shape == (120, 160, 3)  # the lenient decode passes it
    with pytest.raises(utils.ImageError, match="damaged JPEG data") as info:
        utils.decode_image(path, strict=True)
    assert info.value.reason == "damaged"
    good = str(tmp_path / "good.jpg")
    with open(good, "wb") as handle:
        handle.write(jpeg_bytes())
    assert utils.decode_image(good, strict=True).shape == (120, 160, 3)


def test_retain_freed_memory_takes_effect_under_glibc_and_is_a_no_op_elsewhere(monkeypatch):
    import platform

    # On Linux with glibc, mallopt accepts both settings (the threshold is glibc's largest).
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert utils.retain_freed_memory() is expected
    monkeypatch.setattr(sys, "platform", "darwin")
    assert utils.retain_freed_memory() is False


def test_retain_freed_memory_reports_a_setting_glibc_refused(monkeypatch):
    import ctypes

    refused = []

    class Libc:
        @staticmethod
        def mallopt(parameter, value):
            refused.append((parameter, value))
            return 0  # glibc's answer to a value out of range

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    assert utils.retain_freed_memory() is False
    assert refused == [(-3, 32 << 20)]  # M_MMAP_THRESHOLD asked first; the trim is not tried
