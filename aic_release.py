"""The official AI Challenger keypoint releases on disk: their splits, zips and annotation files.

    discover_sources(data_dir)              -> [Source], after extracting the zips found there
    extract_release(zip_path, data_dir, release) -> the number of files written
    extraction_plan(member names, target, release) -> ([(member, destination)], [unsafe names])
    load_annotations(path)                  -> the annotation file's list of records
    scan_images(images_dir)                 -> {image id: file name}
    infer_split(*paths)                     -> "train", "val", "test_a", "test_b" or None

The names of each release (zip, folder, image folder, annotation file) are config.AIC_RELEASES.
Nothing here checks a record: pre-process.py does. Problems a user can fix raise SourceError (a
source cannot be used) or utils.OutputError (data_dir cannot take the extracted files), each a
single line naming the file.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import sys
import zipfile
import zlib

from tqdm import tqdm

import synthetic
import utils
from config import AIC_RELEASES

# What to convert: a split, its annotation file (None for test sets) and its image folder.
Source = collections.namedtuple("Source", "split annotations images")


class SourceError(RuntimeError):
    """A whole source is unusable (unreadable annotation file, bad zip, unsafe overwrite)."""


def load_annotations(path):
    """Read an AIC annotation file: a JSON list of records. Raises SourceError naming the file."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            records = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else error
        raise SourceError(f"{path}: cannot read the annotation file ({reason})") from error
    if not isinstance(records, list):
        raise SourceError(f"{path}: expected a JSON list of records, got a "
                          f"{type(records).__name__}")
    return records


def scan_images(images_dir):
    """Map image id (file name without extension) -> file name of every image in images_dir.

    One directory listing instead of one stat per record: much faster for 210,000 files. Hidden
    files (a killed extraction's .tmp-* files among them) are not images. Of two files with one
    id, the .jpg wins. A missing folder gives {}.
    """
    found = {}
    if not os.path.isdir(images_dir):
        return found
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, extension = os.path.splitext(entry.name)
            extension = extension.lower()
            if extension in utils.IMAGE_EXTENSIONS and not entry.name.startswith("."):
                if stem not in found or extension == ".jpg":
                    found[stem] = entry.name
    return found


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
# The official zips.
# --------------------------------------------------------------------------------------------
def _is_unsafe_member(name):
    """A member name that would escape the target folder if it were used as a path."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]


def extraction_plan(names, target, release):
    """Map zip member names to destinations in the official layout under `target`.

    Members are matched by their file name (the annotation file) or their parent folder's name
    (images). Destinations are built from base names alone, so no member can be written outside
    `target`. Returns ([(member name, destination)], [unsafe member names]). Raises SourceError
    naming both members when two would land on one file: which one wins would be arbitrary.
    """
    plan, unsafe, members_by_destination = [], [], {}
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
            destination = os.path.join(target, base)
        elif (parent == release.images
              and os.path.splitext(base)[1].lower() in utils.IMAGE_EXTENSIONS):
            destination = os.path.join(target, release.images, base)
        else:
            continue
        if destination in members_by_destination:
            raise SourceError(f"members {members_by_destination[destination]!r} and {name!r} are "
                              f"both {base}; keep one of them")
        members_by_destination[destination] = name
        plan.append((name, destination))
    return plan, unsafe


def _extract_member(archive, name, destination):
    """Copy one member to its destination atomically; False (and a warning) if it is corrupt."""
    try:
        with archive.open(name) as member, utils.atomic_path(destination) as temporary:
            with open(temporary, "wb") as handle:
                shutil.copyfileobj(member, handle, 1 << 20)
        return True
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        print(f"warning: member {name} is corrupt and was skipped ({error})", file=sys.stderr)
        return False


def _open_release_zip(zip_path, target, release):
    """(open archive, {member: size}, plan, unsafe names); SourceError for an unusable zip."""
    try:
        archive = zipfile.ZipFile(zip_path)
        sizes = {info.filename: info.file_size for info in archive.infolist()}
        plan, unsafe = extraction_plan(list(sizes), target, release)
    except (zipfile.BadZipFile, OSError, SourceError) as error:
        problem = error if isinstance(error, SourceError) else f"not a readable zip ({error})"
        raise SourceError(f"{zip_path}: {problem}") from None
    return archive, sizes, plan, unsafe


def extract_release(zip_path, data_dir, release):
    """Extract what a release needs (annotation file and images) into data_dir/<folder>/.

    Files already there with the member's size are skipped, so an interrupted extraction
    resumes; the hidden files a killed one left are deleted. Returns the number of files
    written. Raises SourceError (bad zip, a synthetic set in the way, two members for one file)
    or utils.OutputError (the folder is read-only or full).
    """
    target = os.path.join(data_dir, release.folder)
    if os.path.exists(os.path.join(target, synthetic.SYNTHETIC_MARKER)):
        raise SourceError(f"{target} holds a synthetic set but {zip_path} is the real release; "
                          "remove the synthetic folder first")
    archive, sizes, plan, unsafe = _open_release_zip(zip_path, target, release)
    for name in unsafe:
        print(f"warning: {zip_path}: unsafe member name {name!r} skipped", file=sys.stderr)
    todo = [(name, path) for name, path in plan
            if not (os.path.isfile(path) and os.path.getsize(path) == sizes[name])]
    written = 0
    with archive, tqdm(total=sum(sizes[name] for name, _ in todo), unit="B", unit_scale=True,
                       desc=f"extracting {os.path.basename(zip_path)}", mininterval=0.5) as bar:
        try:
            for folder in (target, os.path.join(target, release.images)):
                if os.path.isdir(folder):
                    utils.remove_leftovers(folder)
            for name, path in todo:
                written += _extract_member(archive, name, path)
                bar.update(sizes[name])
        except OSError as error:  # A full disk must stop the run, not skip every member.
            raise utils.OutputError(f"{target}: cannot extract {zip_path} there "
                                    f"({utils.os_reason(error)})") from error
    print(f"{zip_path}: {written} files extracted, {len(plan) - len(todo)} already there")
    if not plan:
        print(f"warning: {zip_path}: no member named {release.annotations} or inside a folder "
              f"named {release.images}", file=sys.stderr)
    return written


def discover_sources(data_dir):
    """Extract the official zips found in data_dir and return a Source per split found.

    Raises synthetic.SyntheticError if data_dir holds parts of two synthetic sets, SourceError
    if it holds nothing usable (the message lists the zips looked for).
    """
    synthetic.check_complete(data_dir)
    sources = []
    for split, release in AIC_RELEASES.items():
        zip_path = os.path.join(data_dir, release.folder + ".zip")
        folder = os.path.join(data_dir, release.folder)
        images = os.path.join(folder, release.images)
        if os.path.isfile(zip_path):
            extract_release(zip_path, data_dir, release)
        if release.annotations is None and os.path.isdir(images):
            sources.append(Source(split, None, images))
        elif release.annotations is not None and os.path.isfile(
                os.path.join(folder, release.annotations)):
            sources.append(Source(split, os.path.join(folder, release.annotations), images))
    if not sources:
        zips = ", ".join(release.folder + ".zip" for release in AIC_RELEASES.values())
        raise SourceError(f"no AI Challenger data in {data_dir}/: put the official zips ({zips}) "
                          "or their unpacked folders there, pass --annotations FILE --images DIR, "
                          "or make a synthetic set with --synthetic 200 --seed 1")
    return sources
