"""Small helpers shared by the scripts: atomic writes, image reading, record I/O."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np

from config import NUM_JOINTS


class ImageError(ValueError):
    """An image file that is missing, unreadable or truncated; the message names the file."""


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A crash or exception leaves `path` untouched (the old file or nothing), never half-written.
    `suffix` defaults to the file's own extension so that writers that infer the format from
    the name (OpenCV, Keras) still work.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if suffix is None:
        suffix = "." + os.path.basename(path).split(".", 1)[-1] if "." in os.path.basename(path) else ""
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        yield temporary
        # mkstemp creates files readable by the owner only; give the result the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def atomic_write_text(path, text):
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_json(path, value, indent=None):
    """Write `value` as JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(value, indent=indent) + "\n")


def read_image_rgb(path):
    """Read an image file as uint8 RGB (H, W, 3); grey and 4-channel images are converted.

    Raises ImageError naming the file when it is missing, not an image, or truncated.
    """
    import cv2

    if not os.path.isfile(path):
        raise ImageError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"{path}: image file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{path}: not a readable image")
    if looks_truncated(path, data[-16:].tobytes()):
        raise ImageError(f"{path}: image file is truncated")
    if image.dtype != np.uint8:
        image = (image / (np.iinfo(image.dtype).max / 255.0)).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def looks_truncated(path, tail):
    """True when `tail`, the file's last 16 bytes, lacks the end its extension needs.

    JPEG files must end with the EOI marker FF D9 and PNG files with the IEND chunk; a file cut
    short in a download or copy misses them. Other formats are not checked.
    """
    lowered = path.lower()
    if lowered.endswith((".jpg", ".jpeg")):
        return tail[-2:] != b"\xff\xd9"
    if lowered.endswith(".png"):
        return b"IEND" not in tail[-16:]
    return False


def keypoints_from_aic(values):
    """AIC's flat list of 42 numbers [x, y, v] * 14 -> float array (14, 3)."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (NUM_JOINTS * 3,):
        raise ValueError(f"expected {NUM_JOINTS * 3} numbers, got shape {array.shape}")
    return array.reshape(NUM_JOINTS, 3)


def keypoints_to_aic(keypoints):
    """(14, 3) array -> AIC's flat list of 42 ints (x, y rounded; v as given)."""
    array = np.asarray(keypoints, dtype=np.float64).reshape(NUM_JOINTS, 3)
    return [int(round(value)) for value in array.reshape(-1)]


def read_jsonl(path):
    """Yield the JSON objects of a JSON-lines file, one per non-empty line."""
    with open(path, "r", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
