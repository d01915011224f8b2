"""Run a trained model on images, a folder, a video or a camera, and draw the people found.

    python demo.py                                   # newest best checkpoint in models/ on images/samples/
    python demo.py --image photo.jpg --model models/cpu/best.keras
    python demo.py --image DIR --json predictions.json   # AI Challenger submission format
    python demo.py --video clip.mp4                  # writes clip_pose.mp4 and clip_pose.jsonl
    python demo.py --video 0 --max-frames 300 --show # camera 0, in a window (GUI OpenCV)
    python demo.py --model models/cpu/best.onnx      # an exported model (export.py), no TensorFlow
    python demo.py --image photo.jpg --show-maps left_elbow          # a part's heatmap
    python demo.py --image photo.jpg --show-maps right_elbow-right_wrist  # a limb's PAF

Results are written beside the inputs (or into --output DIR) as <name>_pose.<ext>, and map
overlays as <name>_maps_<map>.jpg; files with those suffixes are never read as inputs. Every
output is written atomically. The inference settings (--scales, --flip, --peak-threshold, ...)
start from the checkpoint's config.json (an exported model's sidecar JSON) and can be
overridden here.

In a video, people keep an id from frame to frame (tracking.py: keypoint similarity, Hungarian
pairing, ids kept through --track_max_missed missed frames) and their keypoints are smoothed
by a One-Euro filter (--temporal_smoothing false turns it off). The drawing shows ids and the
processing rate; <name>_pose.jsonl holds one JSON line per frame: {"frame", "time" (seconds),
"people": [{"id", "keypoints": 14 x [x, y, score]}]}. --json entries are never smoothed, so
they score as single images do.

A file that cannot be used as an image (text, an empty or cut file, a picture too large for
the settings) is skipped with one "skipped: FILE: reason" line on stderr, and the others are
processed. Exit status: 0 when at least one image (or a video frame) was done; 1 when every
image was skipped (then nothing is written, --json included); 2 for an error that stops the
run before its results (a missing or broken checkpoint or input, a video without frames, an
output that cannot be written), reported in one "demo.py: error:" line.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import cv2
import numpy as np

import config
import inference
import parsing
import runtimes
import tracking
import utils
from config import JOINT_COLORS, JOINT_NAMES, LIMB_COLORS, LIMBS, NUM_HEATMAPS, NUM_PAFS

OUTPUT_SUFFIX = "_pose"
MAPS_SUFFIX = "_maps_"
DEFAULT_IMAGES_DIR = os.path.join("images", "samples")
WINDOW_NAME = "demo.py (q or Esc to stop)"
TRAIN_HINT = "train one with `python train.py --preset cpu` or pass --model PATH"
# The most memory that fusing one image's maps may take. With --fusion_upsample 0 the maps are
# fused at the image's full resolution, NUM_HEATMAPS + NUM_PAFS float32 values per pixel held
# about FUSION_COPIES times over while the scales are resampled and the peaks found (measured
# on a 2000 x 1500 image): an 8000 x 6000 photo would need some 24 GiB, and the system would
# kill the run half-way through instead of skipping that one image.
MAX_FUSION_BYTES = 8 << 30
FUSION_COPIES = 3


class DemoError(Exception):
    """A problem to report in one line (no traceback) before exiting with status 2."""


# --------------------------------------------------------------------------------------------
# Checkpoint and configuration
# --------------------------------------------------------------------------------------------
def find_checkpoint(models_dir):
    """The newest models_dir/*/best.keras, else the newest */last.keras; DemoError if none."""
    for name in ("best.keras", "last.keras"):
        found = glob.glob(os.path.join(models_dir, "*", name))
        if found:
            return max(found, key=os.path.getmtime)
    raise DemoError(f"no checkpoint found in {models_dir}/ (looked for */best.keras and "
                    f"*/last.keras); {TRAIN_HINT}")


def explicit_overrides(args):
    """The Config fields given on the command line (not the defaults)."""
    overrides = config.overrides_from_args(args)
    if args.flip:
        overrides["flip_test"] = True
    return overrides


def load_network(path, overrides):
    """(network, config) of runtimes.load_for_inference, the one loader demo and evaluate
    share (a .keras checkpoint or an exported model); DemoError with a hint when the file is
    missing. RuntimeLoadError (a ValueError) names any other problem in one line."""
    if not os.path.exists(path):
        raise DemoError(f"{path}: checkpoint not found; {TRAIN_HINT}")
    return runtimes.load_for_inference(path, overrides)


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------
def is_output_file(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem.endswith(OUTPUT_SUFFIX) or MAPS_SUFFIX in stem


def collect_images(paths):
    """Image files named by `paths` (files, or folders scanned for image extensions), sorted
    within each folder, without this script's own outputs. A folder's subfolders are not
    scanned, whatever their names (photos.jpg/). DemoError for a missing path."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(name for name in os.listdir(path)
                           if name.lower().endswith(utils.IMAGE_EXTENSIONS)
                           and not os.path.isdir(os.path.join(path, name)))
            found += [os.path.join(path, name) for name in names
                      if not is_output_file(name)]
        elif os.path.exists(path):
            found.append(path)
        else:
            raise DemoError(f"{path}: no such file or folder")
    return found


def output_path(path, out_dir, suffix, extension=None):
    """<out_dir or path's folder>/<stem><suffix><extension or path's extension>."""
    stem, original_extension = os.path.splitext(os.path.basename(path))
    extension = extension or (original_extension if original_extension.lower()
                              in utils.IMAGE_EXTENSIONS else ".jpg")
    return os.path.join(out_dir or os.path.dirname(os.path.abspath(path)),
                        stem + suffix + extension)


def check_outputs(args, paths):
    """Raise utils.OutputError, before any work, when an output of this run cannot be written:
    the --json file, the video, or a drawing in any of the folders the drawings go to."""
    targets = [args.json] if args.json else []
    if args.video:
        targets.append(video_output_path(args.video, args.output))
    else:  # One drawing per folder stands for all the drawings there.
        drawings = [output_path(path, args.output, OUTPUT_SUFFIX) for path in paths]
        targets += list({os.path.dirname(drawing): drawing for drawing in drawings}.values())
    for target in targets:
        utils.check_writable(target)


def write_image(path, image_bgr):
    """Write an image atomically; DemoError if OpenCV cannot encode it."""
    with utils.atomic_path(path) as temporary:
        if not cv2.imwrite(temporary, image_bgr):
            raise DemoError(f"{path}: OpenCV could not write this image")


def submission_entry(image_id, people, integer=False):
    """One AI Challenger submission record (humanN keys, v = 1 for found joints; sub-pixel
    coordinates unless `integer`)."""
    return {"image_id": image_id,
            "keypoint_annotations": parsing.people_to_aic(people, integer)}


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def drawing_sizes(shape):
    """(limb thickness, joint radius, font scale) that stay readable from thumbnails to 4K."""
    side = min(shape[0], shape[1])
    thickness = max(2, int(round(side / 180)))
    return thickness, thickness + max(1, thickness // 2), max(0.4, side / 900)


def _person_label(canvas, person, number, sizes):
    """Write the person's number above its highest found joint, white on a black outline."""
    found = person[:, 2] > 0
    if not found.any():
        return
    top = np.argmin(np.where(found, person[:, 1], np.inf))
    thickness, radius, font_scale = sizes
    origin = (int(person[top, 0]) - radius, max(int(person[top, 1]) - 2 * radius, 12))
    for color, width in (((0, 0, 0), thickness + 2), ((255, 255, 255), max(1, thickness // 2))):
        cv2.putText(canvas, str(number), origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale * 1.2,
                    color, width, cv2.LINE_AA)


def draw_people(image_bgr, people, labels=None):
    """A copy of the image with each person's limbs (config.LIMB_COLORS), joints
    (config.JOINT_COLORS, black rims) and label: labels[i] (a video's track ids), by default
    the number 1, 2, ... (1 = best score). people: (N, 14, 3) of (x, y, score) in this image's
    pixels, score 0 for missing joints."""
    canvas = np.ascontiguousarray(image_bgr).copy()
    sizes = drawing_sizes(canvas.shape)
    thickness, radius, _ = sizes
    for person in np.asarray(people).reshape(-1, len(JOINT_NAMES), 3):
        points = [tuple(int(round(v)) for v in joint[:2]) for joint in person]
        for (a, b), color in zip(LIMBS, LIMB_COLORS):
            if person[a, 2] > 0 and person[b, 2] > 0:
                cv2.line(canvas, points[a], points[b], (0, 0, 0), thickness + 2, cv2.LINE_AA)
                cv2.line(canvas, points[a], points[b], color, thickness, cv2.LINE_AA)
        for joint, color in enumerate(JOINT_COLORS):
            if person[joint, 2] > 0:
                cv2.circle(canvas, points[joint], radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
                cv2.circle(canvas, points[joint], radius, color, -1, cv2.LINE_AA)
    people = np.asarray(people).reshape(-1, len(JOINT_NAMES), 3)
    labels = range(1, len(people) + 1) if labels is None else labels
    for label, person in zip(labels, people):
        _person_label(canvas, person, label, sizes)
    return canvas


def parse_map_spec(text):
    """--show-maps value -> ("joint", j), ("limb", k) or ("background", index).

    Accepts a joint name (left_elbow, left-elbow), "background", a limb as two joint names
    joined by '-' or ':' in either order (neck-head_top), or limbK / jointJ by index.
    """
    cleaned = text.strip().lower().replace(" ", "_")
    names = {name: index for index, name in enumerate(JOINT_NAMES)}
    if cleaned == "background":
        return "background", config.BACKGROUND_CHANNEL
    if cleaned.replace("-", "_") in names:
        return "joint", names[cleaned.replace("-", "_")]
    for prefix, kind, count in (("limb", "limb", len(LIMBS)), ("joint", "joint", len(names))):
        if cleaned.startswith(prefix) and cleaned[len(prefix):].isdigit():
            index = int(cleaned[len(prefix):])
            if index < count:
                return kind, index
    for separator in (":", "-"):
        parts = cleaned.split(separator)
        if len(parts) == 2 and all(part.replace("-", "_") in names for part in parts):
            pair = tuple(names[part.replace("-", "_")] for part in parts)
            for index, limb in enumerate(LIMBS):
                if pair in (limb, limb[::-1]):
                    return "limb", index
    limbs = ", ".join(f"{JOINT_NAMES[a]}-{JOINT_NAMES[b]}" for a, b in LIMBS)
    raise DemoError(f"--show-maps {text!r}: expected a joint ({', '.join(JOINT_NAMES)}), "
                    f"'background', or a limb ({limbs})")


def _grid_to_image_matrix(mapping, stride):
    """2x3 affine taking image pixels to grid coordinates (for cv2.warpAffine's inverse map)."""
    (scale_x, scale_y), (offset_x, offset_y) = mapping["scale"], mapping["offset"]
    centre = (stride - 1) / 2.0
    return np.array([[scale_x / stride, 0, (offset_x - centre) / stride],
                     [0, scale_y / stride, (offset_y - centre) / stride]], dtype=np.float64)


def _map_to_image(grid_map, mapping, shape):
    """A grid map (rows, cols[, <=4 channels]) resampled onto the image (display only)."""
    matrix = _grid_to_image_matrix(mapping, mapping["stride"])
    return cv2.warpAffine(np.ascontiguousarray(grid_map, dtype=np.float32), matrix,
                          (shape[1], shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _paf_arrows(canvas, field, mapping, sizes):
    """White arrows of the PAF vectors, about every 6 line widths, where the field is strong."""
    rows, cols, _ = field.shape
    thickness = sizes[0]
    cell = mapping["stride"] / mapping["scale"][0]  # a grid cell in image pixels
    step = max(1, int(round(max(16, 6 * thickness) / max(cell, 1e-6))))
    for row in range(0, rows, step):
        for col in range(0, cols, step):
            vector = field[row, col]
            if np.hypot(*vector) < 0.2:
                continue
            start = parsing.grid_to_pixels((col, row), mapping["stride"], mapping["scale"],
                                             mapping["offset"])
            end = start + vector * cell * step * 0.6
            cv2.arrowedLine(canvas, tuple(int(v) for v in start), tuple(int(v) for v in end),
                            (255, 255, 255), max(1, thickness // 3), cv2.LINE_AA, tipLength=0.35)


def draw_map_overlay(image_bgr, heatmaps, pafs, mapping, spec):
    """The image with one map blended over it: a joint's (or the background's) heatmap, or a
    limb's PAF magnitude with arrows, like the paper's figures. spec from parse_map_spec."""
    kind, index = spec
    if kind == "limb":
        field = pafs[:, :, 2 * index:2 * index + 2]
        values = np.hypot(field[:, :, 0], field[:, :, 1])
        title = "PAF " + "-".join(JOINT_NAMES[j] for j in LIMBS[index])
    else:
        values = heatmaps[:, :, index]
        title = JOINT_NAMES[index] if kind == "joint" else "background"
    resized = np.clip(_map_to_image(values, mapping, image_bgr.shape), 0.0, 1.0)
    colored = cv2.applyColorMap((resized * 255).astype(np.uint8), cv2.COLORMAP_JET)
    canvas = cv2.addWeighted(image_bgr, 0.5, colored, 0.5, 0.0)
    sizes = drawing_sizes(canvas.shape)
    if kind == "limb":
        _paf_arrows(canvas, field, mapping, sizes)
    origin = (8, int(30 * sizes[2]) + 8)
    for color, width in (((0, 0, 0), sizes[0] + 2), ((255, 255, 255), max(1, sizes[0] // 2))):
        cv2.putText(canvas, title, origin, cv2.FONT_HERSHEY_SIMPLEX, sizes[2], color, width,
                    cv2.LINE_AA)
    return canvas


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def check_fusion_memory(path, image, cfg):
    """Raise utils.ImageError (reason "too_large") when fusing the maps of this image would
    take more than MAX_FUSION_BYTES (only with a small --fusion_upsample and a huge image)."""
    height, width = image.shape[:2]
    rows, cols = inference.fusion_grid(height, width, cfg).shape
    needed = FUSION_COPIES * rows * cols * (NUM_HEATMAPS + NUM_PAFS) * 4
    if needed > MAX_FUSION_BYTES:
        raise utils.ImageError(
            f"{path}: {width}x{height} pixels would take about {needed / 2 ** 30:.0f} GiB of "
            f"memory to fuse the maps at --fusion_upsample {cfg.fusion_upsample}; use "
            "--fusion_upsample 2, or a smaller image", "too_large")


def _readable(paths, skipped, cfg):
    """Yield (path, RGB image) of the readable paths; the others are reported and counted."""
    from tqdm import tqdm

    for path in paths:
        try:
            image = utils.read_image_rgb(path)
            check_fusion_memory(path, image, cfg)
            yield path, image
        except utils.ImageError as error:
            # tqdm.write clears the progress bar first: the warning gets a line of its own.
            tqdm.write(f"skipped: {error}", file=sys.stderr)
            skipped.append(path)


def _save_image_results(path, image_rgb, estimate, args):
    """Write the drawing (and the map overlay) of one image."""
    image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    write_image(output_path(path, args.output, OUTPUT_SUFFIX),
                draw_people(image_bgr, estimate.people))
    if args.show_maps:
        spec = parse_map_spec(args.show_maps)
        name = args.show_maps.strip().lower().replace(" ", "_").replace(":", "-")
        overlay = draw_map_overlay(image_bgr, estimate.heatmaps, estimate.pafs,
                                   estimate.mapping, spec)
        write_image(output_path(path, args.output, MAPS_SUFFIX + name, ".jpg"), overlay)


def process_images(network, cfg, paths, args):
    """Run the model on image files through the batched stream (inference.estimate_poses_stream);
    returns (submission entries, skipped paths)."""
    from tqdm import tqdm

    entries, skipped = [], []
    # The key handed back with each estimate is (path, image), for drawing.
    items = (((path, image), image) for path, image in _readable(paths, skipped, cfg))
    stream = inference.estimate_poses_stream(network, items, cfg)
    with tqdm(total=len(paths), unit="image", desc="demo", disable=len(paths) < 2) as bar:
        for (path, image), estimate in stream:
            _save_image_results(path, image, estimate, args)
            entries.append(submission_entry(os.path.splitext(os.path.basename(path))[0],
                                            estimate.people, cfg.integer_output))
            bar.update(len(entries) + len(skipped) - bar.n)
    return entries, skipped


# --------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------
def open_video(source):
    """cv2.VideoCapture of a file or a camera index; DemoError if it cannot be opened.

    FFmpeg's own messages ("moov atom not found") are kept off the terminal: the first of them
    becomes part of the one-line error instead.
    """
    camera = source.isdigit()
    if not camera and os.path.isfile(source) and os.path.getsize(source) == 0:
        raise DemoError(f"{source}: the video file is empty")
    native = []
    with utils.native_stderr_captured(native):
        capture = cv2.VideoCapture(int(source) if camera else source)
    if not capture.isOpened():
        capture.release()
        what = f"camera {source}" if camera else source
        said = native[0].decode("utf-8", "replace").strip().splitlines()
        reason = f": {said[0].split('] ')[-1]}" if said else ""
        raise DemoError(f"{what}: cannot open this video (missing, unreadable or an unsupported "
                        f"format{reason})")
    return capture


def video_output_path(source, out_dir):
    if source.isdigit():
        return os.path.join(out_dir or ".", f"camera{source}{OUTPUT_SUFFIX}.mp4")
    return output_path(source, out_dir, OUTPUT_SUFFIX, ".mp4")


def _frames(capture, max_frames):
    """Yield BGR frames until the video ends or max_frames (0: no limit) are read."""
    read = 0
    while not max_frames or read < max_frames:
        ok, frame = capture.read()
        if not ok:
            return
        read += 1
        yield frame


def _open_writer(path, frame, fps):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                             (frame.shape[1], frame.shape[0]))
    if not writer.isOpened():
        raise DemoError(f"{path}: OpenCV cannot write an mp4 video here")
    return writer


def warn_if_cut(source, frames_read, announced):
    """Warn on stderr when a video file gave fewer frames than its container announces: OpenCV
    ends a cut or damaged file at the first frame it cannot decode, without an error."""
    if 0 < frames_read < announced:
        print(f"warning: {source}: only {frames_read} of the {announced} frames the file "
              "announces could be read; the rest is cut off or damaged", file=sys.stderr)



def check_gui():
    """DemoError unless OpenCV can open a window here (--show); the headless build, the
    project's default dependency, has no GUI at all."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        raise DemoError("--show needs a display, and this session has none (DISPLAY is not "
                        "set); the annotated video is written without --show")
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise DemoError("--show needs OpenCV with a GUI, but this OpenCV has none (the "
                        "opencv-python-headless build, the default dependency); install "
                        "opencv-python instead, or leave out --show (the annotated video is "
                        "written anyway)")


def track_line(frame, time, ids, people):
    """One line of the tracks file (JSON): {"frame", "time" (s), "people": [{"id",
    "keypoints": 14 x [x, y, score]}]}, coordinates to COORDINATE_DECIMALS."""
    decimals = parsing.COORDINATE_DECIMALS
    entries = [{"id": int(track_id),
                "keypoints": [[round(float(x), decimals), round(float(y), decimals),
                               round(float(score), 4)] for x, y, score in person]}
               for track_id, person in zip(ids, np.asarray(people))]
    return json.dumps({"frame": frame, "time": round(float(time), 4), "people": entries})


def draw_rate(canvas, rate):
    """Write the processing rate ("12.3 fps") in the top-left corner, in place."""
    thickness, _, font_scale = drawing_sizes(canvas.shape)
    origin = (8, int(24 * font_scale) + 8)
    for color, width in (((0, 0, 0), thickness + 2), ((255, 255, 255), max(1, thickness // 2))):
        cv2.putText(canvas, f"{rate:.1f} fps", origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    color, width, cv2.LINE_AA)


class VideoAnnotator:
    """Per frame of a video: track ids (tracking.Tracker), smoothed keypoints, the drawing
    with ids and processing rate, its tracks line, and the live window.

    fps: the video's frame rate (a file's frame times are index / fps); live: a camera, whose
    frame times are seconds since the start; show: a window opened with check_gui.
    """

    def __init__(self, cfg, fps, live=False, show=False):
        self.tracker, self.fps, self.live, self.show = tracking.Tracker(cfg), fps, live, show
        self.started, self.frames = time.monotonic(), 0

    def rate(self):
        """Frames processed per second of wall time so far."""
        return self.frames / max(time.monotonic() - self.started, 1e-9)

    def annotate(self, frame_bgr, people):
        """(drawn BGR frame, tracks line) of the next frame and the people found in it."""
        moment = time.monotonic() - self.started if self.live else self.frames / self.fps
        ids, smoothed = self.tracker.update(people, moment)
        line = track_line(self.frames, moment, ids, smoothed)
        self.frames += 1
        drawn = draw_people(frame_bgr, smoothed, labels=ids.tolist())
        draw_rate(drawn, self.rate())
        return drawn, line

    def display(self, drawn):
        """Show the frame when asked; False once the viewer presses q or Esc."""
        if not self.show:
            return True
        cv2.imshow(WINDOW_NAME, drawn)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)


def _annotate_video(network, cfg, capture, writer_path, args, tracks_handle=None):
    """Read, estimate (batched stream, frames in order), track, draw and write every frame;
    returns (entries, frames written, frames per second). A camera is run one frame at a time
    (no batching latency); --json entries hold the unsmoothed people."""
    from tqdm import tqdm

    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # -1 or 0 when unknown
    total = announced if announced > 0 else None
    if args.max_frames:
        total = min(total or args.max_frames, args.max_frames)
    live = args.video.isdigit()
    stem = "camera" + args.video if live else os.path.splitext(os.path.basename(args.video))[0]
    annotator = VideoAnnotator(cfg, fps, live, args.show)
    writer, entries, count = None, [], 0
    # The key handed back with each estimate is the BGR frame, for drawing.
    items = ((frame, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
             for frame in _frames(capture, args.max_frames))
    stream = inference.estimate_poses_stream(network, items, cfg, chunk_size=1 if live else None)
    try:
        # The bar waits a second before it shows: a video without frames then shows none.
        with tqdm(total=total, unit="frame", desc="video", delay=1.0) as bar:
            for frame, estimate in stream:
                if writer is None:
                    writer = _open_writer(writer_path, frame, fps)
                drawn, line = annotator.annotate(frame, estimate.people)
                writer.write(drawn)
                if tracks_handle is not None:
                    tracks_handle.write(line + "\n")
                entries.append(submission_entry(f"{stem}_{count:06d}", estimate.people,
                                                cfg.integer_output))
                count += 1
                bar.update(1)
                if not annotator.display(drawn):
                    break
    except KeyboardInterrupt:
        print("interrupted: keeping the frames done so far", file=sys.stderr)
        announced = 0  # Stopped by the user, not by the file.
    finally:
        if writer is not None:
            writer.release()
        if args.show:
            cv2.destroyAllWindows()
    if not live and not (args.max_frames and count == args.max_frames):
        warn_if_cut(args.video, count, announced)
    return entries, count, annotator.rate()


def process_video(network, cfg, args):
    """Annotate a video file or camera stream into <name>_pose.mp4 and its tracks as
    <name>_pose.jsonl (both atomically)."""
    capture = open_video(args.video)
    destination = video_output_path(args.video, args.output)
    tracks = os.path.splitext(destination)[0] + ".jsonl"
    try:
        with utils.atomic_path(destination) as temporary, utils.atomic_path(tracks) as lines:
            with open(lines, "w", encoding="utf-8") as handle:
                entries, count, rate = _annotate_video(network, cfg, capture, temporary, args,
                                                       handle)
            if count == 0:
                raise DemoError(f"{args.video}: no frame could be read from this video")
    finally:
        capture.release()
    print(f"wrote {destination} and {tracks} ({count} frames, {rate:.2f} frames/s)")
    return entries


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        description="Draw the people a trained model finds in images, a folder, a video or a "
                    "camera stream (no arguments: the newest checkpoint in models/ on images/samples/).",
        epilog=inference.INFERENCE_OPTIONS_HELP, allow_abbrev=False)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", nargs="+", metavar="PATH",
                        help="image files and/or folders of images (default: images/samples/)")
    source.add_argument("--video", metavar="PATH|CAMERA",
                        help="a video file, or a camera index such as 0")
    parser.add_argument("--model", metavar="PATH",
                        help="checkpoint (.keras, config.json beside it) or run folder, or a "
                             "model exported by export.py (SavedModel folder, .onnx, .tflite); "
                             "default: newest models/*/best.keras, else */last.keras")
    parser.add_argument("--output", metavar="DIR",
                        help="write results here instead of beside the inputs")
    parser.add_argument("--json", metavar="OUT",
                        help="also write the people as an AI Challenger submission JSON")
    parser.add_argument("--show-maps", "--show_maps", dest="show_maps", metavar="PART_OR_LIMB",
                        help="images only: also write an overlay of a joint's heatmap (e.g. "
                             "left_elbow, background) or a limb's PAF (e.g. "
                             "right_elbow-right_wrist) as <name>_maps_<map>.jpg")
    parser.add_argument("--flip", action="store_true",
                        help="flip test: also run the mirror image (same as --flip-test)")
    parser.add_argument("--max-frames", "--max_frames", dest="max_frames", type=int, default=0,
                        help="stop a video or camera after this many frames (0: all)")
    parser.add_argument("--show", action="store_true",
                        help="video: also show the annotated frames in a window (needs OpenCV "
                             "with a GUI, not the default headless build); q or Esc stops")
    config.add_config_arguments(parser)
    return parser


def run(args):
    """Do what the arguments ask; returns the exit status. Raises DemoError."""
    if args.show_maps:
        parse_map_spec(args.show_maps)  # fail before loading anything
    if args.show:
        check_gui()
    overrides = explicit_overrides(args)
    models_dir = overrides.get("models_dir", config.Config().models_dir)
    checkpoint = args.model or find_checkpoint(models_dir)
    paths = [] if args.video else collect_images(args.image or [DEFAULT_IMAGES_DIR])
    if not args.video and not paths:
        where = ", ".join(args.image or [DEFAULT_IMAGES_DIR])
        raise DemoError(f"no images found in {where}; pass --image PATH or add .jpg/.png files")
    check_outputs(args, paths)
    network, cfg = load_network(checkpoint, overrides)
    if cfg.retain_freed_memory:
        utils.retain_freed_memory()
    print(f"model {checkpoint}; scales {tuple(cfg.scales)}, flip test {cfg.flip_test}")
    skipped = []
    if args.video:
        entries = process_video(network, cfg, args)
    else:
        entries, skipped = process_images(network, cfg, paths, args)
        where = args.output or "beside the inputs"
        print(f"{len(entries)} image(s) done, results {where}; {len(skipped)} skipped")
        if skipped and not entries:  # An empty --json would replace a good one for nothing.
            print(f"demo.py: error: none of the {len(skipped)} image(s) could be used; nothing "
                  "written", file=sys.stderr)
            return 1
    if args.json:
        utils.write_json_output(args.json, entries)
        print(f"wrote {args.json} ({len(entries)} entries)")
    return 0


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_frames < 0:
        parser.error("--max-frames must be >= 0")
    if args.show and not args.video:
        parser.error("--show needs --video")
    try:
        return run(args)
    except (DemoError, utils.OutputError) as error:
        print(f"demo.py: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # A checkpoint, settings or maps found wrong on the way.
        print(f"demo.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except OSError as error:  # A drawing that could not be written (a disk that filled up).
        print(f"demo.py: error: {error.filename}: {utils.os_reason(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
