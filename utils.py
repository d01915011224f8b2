"""Small helpers shared by the scripts: image reading, atomic writes and output checks, groups of
files switched together, threads with a progress bar, script logging."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm


# The one list of image file names the project picks up (pre-process's image folders and zips,
# demo's and evaluate's folders): the extensions of the formats decode_image identifies by their
# content (IMAGE_SIGNATURES) and OpenCV decodes. A name only selects a file; what it holds is
# then decided by its content.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# How each format's content begins; the truncation rule goes by content, not by name.
IMAGE_SIGNATURES = (
    ("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG\r\n\x1a\n"), ("BMP", b"BM"),
    ("TIFF", b"II*\x00"), ("TIFF", b"MM\x00*"), ("WebP", b"RIFF"),
)
# Items per thread-pool task in map_ordered: large enough to amortise the task overhead.
CHUNK_SIZE = 64
# Bytes read from each end of a file to identify it and check its end marker.
PROBE_BYTES = 16
# libjpeg's warnings about damaged data; OpenCV decodes such files without an error.
JPEG_DAMAGE_WARNINGS = (b"Corrupt JPEG data", b"Premature end of JPEG", b"Bogus", b"Invalid JPEG")
# File descriptor 2 is process-wide: one strict decode at a time may borrow it.
_NATIVE_STDERR_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and says what it is.

    reason: "missing", "empty", "not_an_image", "truncated", "damaged", "unreadable" or
    "too_large" (demo.py: too many pixels for its settings).
    """

    def __init__(self, message, reason="unreadable"):
        super().__init__(message)
        self.reason = reason


def image_format(head):
    """The format ("JPEG", "PNG", ...) that a file's first bytes announce, or None."""
    for name, signature in IMAGE_SIGNATURES:
        # RIFF also starts WAV and AVI files: a WebP image says WEBP at bytes 8 to 11.
        if head.startswith(signature) and (name != "WebP" or head[8:12] == b"WEBP"):
            return name
    return None


def describe_content(head):
    """What a file that is not an image seems to be, from its first bytes (for messages)."""
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON or other text"
    if head.lstrip()[:1] == b"<":
        return "HTML or XML text"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "binary data of an unknown kind"


def check_image_ends(path, head, tail):
    """Raise ImageError unless `head` starts like an image and `tail` ends as its format must.

    head, tail: the file's first and last PROBE_BYTES bytes. JPEG data must end with the EOI
    marker FF D9 and PNG data with the IEND chunk, whatever the file's name says; a file cut
    short in a download misses them. Returns the format's name.
    """
    kind = image_format(head)
    if kind is None:
        raise ImageError(f"{path}: not an image: {describe_content(head)}", "not_an_image")
    truncated = (kind == "JPEG" and tail[-2:] != b"\xff\xd9") or \
        (kind == "PNG" and b"IEND" not in tail)
    if truncated:
        raise ImageError(f"{path}: {kind} data is truncated (no end marker)", "truncated")
    return kind


def read_file_ends(path):
    """(size, first PROBE_BYTES, last PROBE_BYTES) of a file, without reading all of it."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(PROBE_BYTES)
            handle.seek(max(0, size - PROBE_BYTES))
            return size, head, handle.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found", "missing")
    except OSError as error:
        raise ImageError(f"{path}: cannot read image file ({error.strerror})", "missing")


@contextlib.contextmanager
def _native_stderr_into(sink):
    """Send what C libraries write to file descriptor 2 into the file `sink` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def native_stderr_captured(found):
    """Meanwhile, keep what C libraries (libjpeg, FFmpeg) write to file descriptor 2 off the
    terminal; afterwards append it, as bytes, to the list `found`.

    Their messages ("moov atom not found", "Corrupt JPEG data") would otherwise stand beside
    the script's own one-line message; the caller decides what to make of them. File
    descriptor 2 is process-wide, so one capture at a time may borrow it.
    """
    with _NATIVE_STDERR_LOCK, tempfile.TemporaryFile() as sink:
        try:
            with _native_stderr_into(sink):
                yield
        finally:
            sink.seek(0)
            found.append(sink.read())


def _decode_strict(data, flags, path):
    """cv2.imdecode that also raises ImageError when libjpeg reports damaged data."""
    import cv2

    captured = []
    with native_stderr_captured(captured):
        image = cv2.imdecode(data, flags)
    warnings = captured[0]
    if any(marker in warnings for marker in JPEG_DAMAGE_WARNINGS):
        first = warnings.decode("utf-8", "replace").strip().splitlines()[0]
        raise ImageError(f"{path}: damaged JPEG data ({first})", "damaged")
    return image


def to_bgr8(image, path):
    """A decoded image (IMREAD_UNCHANGED) as the uint8 BGR (H, W, 3) the network expects.

    16-bit and other integer images are scaled from their type's range to 0..255 (negative
    values of signed types become 0); floating-point images, which OpenCV takes to span 0..1,
    are clipped to it and scaled (NaN becomes 0). Grey becomes 3 equal channels and the alpha
    channel is dropped. ImageError for other channel counts (a 2- or 5-channel TIFF, say).
    """
    import cv2

    if image.dtype.kind == "f":
        image = np.rint(np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0) * 255.0)
        image = image.astype(np.uint8)
    elif image.dtype != np.uint8:
        top = np.iinfo(image.dtype).max
        image = (np.clip(image, 0, top) / (top / 255.0)).astype(np.uint8)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if channels != 3:
        raise ImageError(f"{path}: an image of {channels} channels (only grey, colour and "
                         "colour with alpha can be used)", "unreadable")
    return image


def decode_image(path, reduce_factor=1, strict=False):
    """Read an image file as uint8 BGR (H, W, 3), decoded at 1/reduce_factor size.

    The one decoder of the project. reduce_factor 1, 2, 4 or 8 uses libjpeg's DCT scaling
    (JPEG only; other formats decode at full size whatever the factor). Grey, 4-channel,
    16-bit and floating-point files become 8-bit 3-channel (to_bgr8); EXIF orientation is
    ignored so that the pixels are the annotated ones. strict also catches JPEGs whose data is
    damaged though their end marker is intact (slower: libjpeg's warnings are captured).
    Raises ImageError naming the file and saying what is wrong (see ImageError.reason).
    """
    import cv2

    size, head, tail = read_file_ends(path)
    if size == 0:
        raise ImageError(f"{path}: image file is empty", "empty")
    kind = check_image_ends(path, head, tail)
    flags = {1: cv2.IMREAD_UNCHANGED, 2: cv2.IMREAD_REDUCED_COLOR_2,
             4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[reduce_factor]
    data = np.fromfile(path, dtype=np.uint8)
    image = _decode_strict(data, flags, path) if strict and kind == "JPEG" else \
        cv2.imdecode(data, flags | (cv2.IMREAD_IGNORE_ORIENTATION if reduce_factor > 1 else 0))
    if image is None or image.size == 0:
        raise ImageError(f"{path}: {kind} data that cannot be decoded", "unreadable")
    return to_bgr8(image, path)


def read_image_rgb(path, strict=False):
    """decode_image as uint8 RGB (H, W, 3); raises ImageError naming the file."""
    import cv2

    return cv2.cvtColor(decode_image(path, strict=strict), cv2.COLOR_BGR2RGB)


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


# ---------------------------------------------------------------------------------------------
# Output files of the scripts: checked before the work, written atomically after it
# ---------------------------------------------------------------------------------------------
class OutputError(RuntimeError):
    """A file or folder that cannot take a script's output (read-only, full, not a folder);
    the message is one line naming it and the reason."""


def os_reason(error):
    """The reason an OSError gives, in words."""
    return error.strerror or (os.strerror(error.errno) if error.errno else str(error))


def check_writable(path):
    """Raise OutputError unless a file can be written atomically at `path` now.

    Run it before long work, so that an output that cannot be written fails at once instead of
    losing the work. Creates the file's folder when it is missing, then creates and deletes a
    hidden file in it (what atomic_path needs: the folder must take new files), so a read-only
    file system, a missing permission or a regular file where a folder should be are found. A
    disk that fills up later is not: write_json_output reports that.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if os.path.isdir(path):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise OSError(errno.ENOTDIR, f"{folder} is not a folder")
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise OutputError(f"{path}: cannot write this file ({os_reason(error)})") from error


def write_json_output(path, value, indent=None):
    """atomic_write_json for a script's result file: an OSError (a full disk, say) becomes an
    OutputError naming the file; the file is then as it was before."""
    try:
        atomic_write_json(path, value, indent)
    except OSError as error:
        raise OutputError(f"{path}: cannot write this file ({os_reason(error)})") from error


def map_ordered(function, items, jobs, description, unit="img"):
    """[function(item) for item in items] on `jobs` threads, in the items' order, with a tqdm
    progress bar labelled `description`.

    Threads suffice for the project's uses: file reads, Pillow's header parsing, JPEG encoding
    and OpenCV spend most of their time outside the GIL, and threads need no pickling.
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


def configure_script_logging(script):
    """Send the messages of a script's run to the terminal as `script: message`: information
    to stdout, warnings and errors to stderr. Library modules only log; scripts call this once
    in their __main__ block."""
    def handler(stream, keep):
        made = logging.StreamHandler(stream)
        made.setFormatter(logging.Formatter(f"{script}: %(message)s"))
        made.addFilter(keep)
        return made

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler(sys.stdout, lambda record: record.levelno < logging.WARNING))
    root.addHandler(handler(sys.stderr, lambda record: record.levelno >= logging.WARNING))


# ---------------------------------------------------------------------------------------------
# Groups of files that change together (pre-process's records, rejects and summary of a split)
# ---------------------------------------------------------------------------------------------
def write_lines(path, lines):
    """Write text lines to a new file and flush them to the disk."""
    with open(path, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def new_hidden_folder(directory, group):
    """A new hidden folder .tmp-{group}-<id> (os.mkdir, unlike mkdtemp, honours the umask)."""
    folder = os.path.join(directory, f".tmp-{group}-{uuid.uuid4().hex[:12]}")
    os.mkdir(folder)
    return folder


def replace_with_link(path, target):
    """Make `path` a symbolic link to `target` in one rename (readers never find it missing)."""
    temporary = os.path.join(os.path.dirname(path), f".tmp-link-{uuid.uuid4().hex}")
    os.symlink(target, temporary)
    os.replace(temporary, path)


def switch_group_to(directory, group, folder, names):
    """Rename the complete `folder` to .{group}.<id>, point the link .{group} at it, make the
    names links through .{group} (where they are not yet) and delete the old version."""
    pointer = os.path.join(directory, "." + group)
    previous = os.readlink(pointer) if os.path.islink(pointer) else None
    version = f".{group}.{os.path.basename(folder).rsplit('-', 1)[-1]}"
    os.rename(folder, os.path.join(directory, version))
    replace_with_link(pointer, version)
    for name in names:
        path, target = os.path.join(directory, name), os.path.join("." + group, name)
        if not (os.path.islink(path) and os.readlink(path) == target):
            replace_with_link(path, target)
    if previous not in (None, version):
        shutil.rmtree(os.path.join(directory, previous), ignore_errors=True)


def publish_group(directory, group, folder, names):
    """Make `folder` (complete, inside directory) the group's files `names` with one rename.

    Each directory/<name> is a symbolic link to .{group}/<name>, and .{group} is a link to a
    version folder, so replacing .{group} switches all of them at once. The plain files of the
    older layout are first hard-linked (or copied) into a version of their own and turned into
    links, showing the same bytes throughout; so are the files a run killed half-way through
    that left. A kill at any point leaves the old
    files or the new ones, and at most unused folders.
    """
    links = [(os.path.join(directory, name), os.path.join("." + group, name))
             for name in names]
    if not (os.path.islink(os.path.join(directory, "." + group)) and all(
            os.path.islink(path) and os.readlink(path) == target for path, target in links)):
        current = new_hidden_folder(directory, group)
        for name in names:
            # realpath: Linux's link() would link a symbolic link itself, not its file.
            visible = os.path.realpath(os.path.join(directory, name))
            if os.path.isfile(visible):
                try:
                    os.link(visible, os.path.join(current, name))
                except OSError:  # A file system without hard links.
                    shutil.copyfile(visible, os.path.join(current, name))
        switch_group_to(directory, group, current, names)
    switch_group_to(directory, group, folder, names)


def remove_leftovers(folder):
    """Delete the hidden .tmp-* files and folders that a killed run left in `folder`."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(".tmp-"):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LARGEST_MMAP_THRESHOLD = 32 << 20


def retain_freed_memory(retained_bytes=256 << 20):
    """Keep memory that numpy and OpenCV free inside the process, for their next arrays.

    By default glibc gives arrays of more than about 128 KiB fresh pages from the kernel
    (mmap) and returns freed memory at the heap's top to it (trim); every frame's maps and
    inputs are then new pages, each touched page a fault. On a 2-core VM a 720p frame's path
    outside the network took 9.69 CPU ms against 7.69 with the memory kept, the resize 3.24
    against 1.82 (benchmarks/bench_frame.py). Arrays up to 32 MiB then come from the heap, and
    up to `retained_bytes` of free memory stay with the process. Returns whether it took effect
    (glibc on Linux only; a no-op elsewhere).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, int(retained_bytes)))
