"""End to end in real time: video frames through decode, resize, network, parsing and tracking.

    python benchmarks/bench_realtime.py                  # everything below (about 10 min, 2 cores)
    python benchmarks/bench_realtime.py --presets light --runtimes openvino-int8 --threads 2
    python benchmarks/bench_realtime.py --presets light,paper --runtimes openvino,openvino-int8
    python benchmarks/bench_realtime.py --sizes 368x656 --frames 300 --seconds 0 --video clip.mp4
    python benchmarks/bench_realtime.py --maps network,oracle   # also parse the truth's maps
    python benchmarks/bench_realtime.py --presets light --runtimes openvino-int8 --streams 1,2
    python benchmarks/bench_realtime.py --presets light --checkpoints light=models/light/best.keras
    python benchmarks/bench_realtime.py --workdir /tmp/realtime # keep the models for the next run

Every frame goes the real-time way, single scale and no flip: decode (cv2.VideoCapture.read),
resize (inference.prepare_input: the frame resized with its aspect ratio kept, by
--input_interpolation, default area, then BGR to RGB, padded to exactly HEIGHT x WIDTH with the
pad grey), network (runtimes.py's runtime.run of the batch of one), parse (inference.parse_image
of the one scale's maps: fusion onto the fine grid, parsing.parse_poses, clipping;
--fusion_upsample 1 parses the network's own grid) and track (tracking.Tracker.update at the
frame's time, One-Euro smoothing included). The video is --video FILE (letterboxed into every
size), else a synthetic one per size: people walking over a cluttered background
(synthetic.walking_people and video_frames), --video_height rows (default 720, an HD camera) at
the size's aspect ratio, --video_frames long, written as an mp4v .mp4; it starts again at its
end.

Networks have random weights (they run as fast as trained ones), or a trained checkpoint's
(--checkpoints light=models/light/best.keras: the maps of a trained network, and so the
parse and track stages, are what a user's will be; the row's weights says which): per preset
(--presets: paper, cpu, light) model.build_model's network saved as train.py saves one,
exported with export.py's functions: ONNX, LiteRT float32, OpenVINO float32 and OpenVINO int8
(NNCF, calibrated on --calibration_frames frames of the video prepared at the largest size).
--runtimes: keras, onnxruntime, litert, openvino (float32), openvino-bf16 (the float32 IR run
with openvino_precision bf16: f32 where the CPU has no bfloat16, which the row's ov_precision
says) and openvino-int8. A runtime whose package is missing is skipped with a one-line note.
Each --threads count runs in its own process (TensorFlow's pools are fixed when it starts):
every runtime and OpenCV get that many threads. Like demo.py, a worker keeps the memory it frees
(utils.retain_freed_memory; --no-retain_freed_memory leaves glibc's default), and the row's
retained_memory says whether it did; benchmarks/bench_frame.py times both ways stage by stage.

Per row: --warmup frames (2 at least: OpenVINO compiles a static model on a shape's second
frame, runtimes.OpenVINORuntime), then up to --frames (per preset: "paper=10,light=100", or
one number) timed, stopping after --seconds once --min_frames (per preset, "30,paper=3") are
timed; frames/s = timed frames / wall time, and each stage's mean milliseconds per frame (a
sequential row's stages add up to 1000 / fps). The pipelined rows (pipelined: true) run three
stages at once: decode and resize on a reader thread, the network on a thread of its own,
parse and track on the main thread, with queues of --queue frames between them (the runtimes
and OpenCV let go of Python's lock while they compute). --streams 1,2 adds pipelined rows (key
streams) where OpenVINO runs two frames' networks at once on two threads, its threads split
between the streams (runtimes.OpenVINORuntime); the frames are put back in order before
parsing and tracking. Their stages are timed in their own threads (they overlap, so they add
up to more than 1000 / fps), wait_ms is the main thread waiting for the network, and speedup
the ratio to the same sequential row.

--maps network parses the network's own maps; those of random weights are noisy (hundreds of
peaks, dozens of fragments): a worst case for parsing. --maps oracle parses, instead, the
synthetic truth's maps rendered as a perfect network would output them
(data_generator.render_targets at the network's grid, computed before the timing): what parsing
and tracking cost behind a trained network, the network still run and timed. Issue 21's
targets are checked on the rows there are, and the load average before and after is printed:
figures from a busy machine are low. The last line is JSON: the list of rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402 - puts the repository on sys.path
import numpy as np  # noqa: E402

PRESETS = ("paper", "cpu", "light")
# --runtimes name: (row's runtime, row's precision, artefact, OpenVINO precision).
RUNTIMES = {"keras": ("keras", "float32", "keras", None),
            "onnxruntime": ("onnxruntime", "float32", "onnx", None),
            "litert": ("litert", "float32", "litert", None),
            "openvino": ("openvino", "float32", "openvino", "f32"),
            "openvino-bf16": ("openvino", "bfloat16", "openvino", "bf16"),
            "openvino-int8": ("openvino", "int8", "openvino_int8", "f32")}
# Artefact: (file name, packages to write it, packages to run it).
ARTEFACTS = {"keras": ("best.keras", (), ()),
             "onnx": ("model.onnx", ("tf2onnx", "onnx"), ("onnxruntime",)),
             "litert": ("model.tflite", (), ("ai_edge_litert|tensorflow",)),
             "openvino": ("model.xml", ("openvino",), ("openvino",)),
             "openvino_int8": ("model_int8.xml", ("openvino", "nncf"), ("openvino",))}
STAGES = ("decode", "resize", "network", "parse", "track")
SIZES = "368x368,368x656"
# At least MIN_FRAMES timed frames a row: on a slow machine two seconds of the light network
# are a dozen frames, too few to rank the variants.
FRAMES, WARMUP, MIN_FRAMES = "100,paper=10", "5,paper=2", "30,paper=3"
VIDEO_FPS = 25.0
TINY = 1e-30  # oracle map values below this are set to 0 (FramePlan.oracle_maps)
HEIGHT = 0.55  # synthetic people's height, a fraction of the video's
# Issue 21's end-to-end targets, OpenVINO on 2 threads: (what, preset, precision, size, frames/s).
TARGETS = (("light OpenVINO int8 368x368 2 threads, frames/s", "light", "int8", (368, 368), 100),
           ("light OpenVINO int8 368x656 2 threads, frames/s", "light", "int8", (368, 656), 60),
           ("paper OpenVINO int8 368x368 2 threads, frames/s", "paper", "int8", (368, 368), 15),
           ("paper OpenVINO int8 368x656 2 threads, frames/s", "paper", "int8", (368, 656), 15))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def listed(text, choices=None, convert=str):
    """The comma-separated items of `text`; ArgumentTypeError names one not in `choices`."""
    items = [convert(item.strip()) for item in text.split(",") if item.strip()]
    unknown = [item for item in items if choices is not None and item not in choices]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices or [])}")
    return items


def size_of(text):
    """(height, width) of "HEIGHTxWIDTH", both multiples of 8 (every preset's stride)."""
    try:
        height, width = (int(value) for value in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give HEIGHTxWIDTH, e.g. 368x656") from None
    if height <= 0 or width <= 0 or height % 8 or width % 8:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be multiples of 8")
    return height, width


def per_preset(text):
    """{preset: int} of "N" or "N,paper=3,cpu=50" (N for every preset not named)."""
    values = {}
    try:
        for item in listed(text):
            name, _, value = item.rpartition("=")
            for preset in ([name] if name else PRESETS):
                values[preset] = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give N or N,preset=M,...") from None
    return values


def checkpoints_of(text):
    """{preset: checkpoint path} of "light=models/light/best.keras,paper=..."."""
    values = {}
    for item in listed(text):
        preset, _, path = item.partition("=")
        if preset not in PRESETS or not path:
            raise argparse.ArgumentTypeError(f"{item!r}: give PRESET=PATH, PRESET one of "
                                             f"{', '.join(PRESETS)}")
        if not os.path.isfile(path):
            raise argparse.ArgumentTypeError(f"{path}: no such checkpoint file")
        values[preset] = path
    return values


def build_parser():
    first, commands, rest = __doc__.split("\n\n", 2)
    parser = argparse.ArgumentParser(description=first + "\n\n" + commands, epilog=rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--presets", type=lambda text: listed(text, PRESETS), default=list(PRESETS),
        help=f"networks, random weights (default {','.join(PRESETS)})")
    add("--runtimes", type=lambda text: listed(text, RUNTIMES), default=list(RUNTIMES),
        help=f"default every one: {','.join(RUNTIMES)}")
    add("--threads", type=lambda text: listed(text, convert=int), default=[1, 2],
        help="thread counts of the runtimes and OpenCV, one process each (default 1,2)")
    add("--sizes", type=lambda text: listed(text, convert=size_of), default=SIZES,
        help=f"network inputs HEIGHTxWIDTH (default {SIZES})")
    add("--frames", type=per_preset, default=FRAMES, help=f"timed frames per row ({FRAMES})")
    add("--warmup", type=per_preset, default=WARMUP, help=f"untimed frames first ({WARMUP})")
    add("--seconds", type=float, default=2.0,
        help="stop a row after this many timed seconds, once --min_frames are timed (0: no cap)")
    add("--min_frames", type=per_preset, default=MIN_FRAMES,
        help=f"timed frames a row has before --seconds may stop it ({MIN_FRAMES})")
    add("--variants", type=lambda text: listed(text, ("sequential", "pipelined")),
        default=["sequential", "pipelined"], help="sequential, pipelined or both (default)")
    add("--queue", type=int, default=2, help="frames the pipelined reader may run ahead")
    add("--streams", type=lambda text: listed(text, convert=int), default=[1],
        help="OpenVINO streams of the pipelined rows, one row each (default 1): N streams run "
             "N frames' networks at once from N threads, the threads split between them")
    add("--maps", type=lambda text: listed(text, ("network", "oracle")), default=["network"],
        help="parse the network's maps (default) and/or the synthetic truth's (oracle)")
    add("--checkpoints", type=checkpoints_of, default={}, metavar="PRESET=PATH,...",
        help="trained checkpoints (train.py's best.keras) to run instead of random weights: "
             "their maps make parsing and tracking cost what they will behind a trained model")
    add("--input_interpolation", choices=("area", "cubic", "linear"), default="area",
        help="how frames are resized for the network (the config field; default area)")
    add("--fusion_upsample", type=int, default=None,
        help="the config field: the one scale's maps parsed on the network's grid made this "
             "much finer (default: the preset's, 2; 1: the network's own grid)")
    add("--retain_freed_memory", action=argparse.BooleanOptionalAction, default=True,
        help="keep freed memory in the worker, as demo.py does (the config field; default on)")
    add("--video", metavar="FILE", help="a video file (default: a synthetic one per size)")
    add("--video_height", type=int, default=720, help="rows of the synthetic video (720)")
    add("--video_frames", type=int, default=120, help="frames of the synthetic video (120)")
    add("--calibration_frames", type=int, default=8, help="OpenVINO int8 calibration (8)")
    add("--workdir", metavar="DIR",
        help="keep videos and models here and reuse them (default: a temporary folder)")
    add("--worker", help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------------------------
# Packages, videos and models (the main process)
# --------------------------------------------------------------------------------------------
def installed(requirement):
    """Whether a package of "a|b" (either) can be imported."""
    return any(importlib.util.find_spec(name) is not None for name in requirement.split("|"))


def usable_runtimes(names):
    """The runtimes of `names` whose packages are installed; a note for each skipped one."""
    kept = []
    for name in names:
        _, write, run = ARTEFACTS[RUNTIMES[name][2]]
        missing = [package for package in write + run if not installed(package)]
        if missing:
            print(f"note: {name} skipped: package {' / '.join(missing)} is not installed")
        else:
            kept.append(name)
    return kept


def synthetic_people(frames, height, width):
    """The truth of a synthetic video: per frame (P, NUM_JOINTS, 3) keypoints in pixels."""
    import synthetic

    count = 3 if width >= 1.5 * height else 2
    starts = [((index + 0.3) * width / count, 0.2 * height) for index in range(count)]
    step = (0.25 * width / count / max(frames, 1), 0.0)  # a quarter of a lane over the video
    return synthetic.walking_people(frames, starts, step, HEIGHT * height, seed=5)


def write_video(path, size, frames):
    """A synthetic mp4v video of `frames` frames (height, width) = size, its truth beside it."""
    import cv2

    import synthetic

    sequence = synthetic_people(frames, *size)
    writer = cv2.VideoWriter(path + ".tmp.mp4", cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS,
                             (size[1], size[0]))
    if not writer.isOpened():
        raise SystemExit(f"{path}: OpenCV cannot write an mp4v video here")
    for image in synthetic.video_frames(sequence, size, seed=6):
        writer.write(image)
    writer.release()
    np.save(path + ".truth.npy", np.stack(sequence))
    os.replace(path + ".tmp.mp4", path)


def videos(args, folder):
    """{(height, width): video path} of every size: --video, else a synthetic video each."""
    paths = {}
    for height, width in args.sizes:
        if args.video:
            paths[height, width] = args.video
            continue
        video_width = 2 * round(args.video_height * width / height / 2)
        path = os.path.join(folder, f"video_{args.video_height}x{video_width}_"
                                    f"{args.video_frames}.mp4")
        if not os.path.isfile(path):
            write_video(path, (args.video_height, video_width), args.video_frames)
        paths[height, width] = path
    return paths


def calibration(cfg, video, size, count):
    """`count` frames spread over `video`, prepared as the network sees them at `size`:
    uint8 (1, H, W, 3) RGB, export.calibration_inputs' form."""
    import cv2

    capture = cv2.VideoCapture(video)
    frames = []
    while len(frames) < max(count * 4, 1):
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    picks = np.unique(np.linspace(0, len(frames) - 1, count).astype(int)) if frames else []
    plan = FramePlan(cfg, frames[0].shape, size) if frames else None
    return [plan.prepare(frames[index]).astype(np.uint8) for index in picks]


def artefact_paths(folder, names):
    """{runtime name: artefact path} of the runtimes `names` in a preset's folder."""
    return {name: os.path.join(folder, ARTEFACTS[RUNTIMES[name][2]][0]) for name in names}


def exported(path):
    return os.path.isfile(path) and (path.endswith(".keras")
                                     or os.path.isfile(path + ".json"))


def preset_folder(workdir, preset, source):
    """A preset's folder of artefacts: its random network's, or one per trained checkpoint."""
    if not source:
        return os.path.join(workdir, preset)
    tag = zlib.crc32(os.path.abspath(source).encode()) % 10 ** 6
    return os.path.join(workdir, f"{preset}-{os.path.basename(os.path.dirname(source))}-{tag}")


def starting_network(preset, folder, source):
    """(network, cfg) of a preset's folder: its best.keras if there, else a copy of the
    trained checkpoint `source` (with its config.json), else a new random network."""
    import config
    import model

    checkpoint = os.path.join(folder, "best.keras")
    os.makedirs(folder, exist_ok=True)
    if not os.path.isfile(checkpoint) and source:
        network, cfg = model.load_checkpoint(source)
        if cfg.preset != preset:
            raise SystemExit(f"--checkpoints {preset}={source}: that run is preset {cfg.preset}")
        shutil.copyfile(source, checkpoint)
        config.save_config(cfg, os.path.join(folder, "config.json"))
        return network, cfg
    if os.path.isfile(checkpoint):
        return model.load_checkpoint(checkpoint)
    cfg = config.make_config(preset, backbone_weights="none")
    network = model.build_model(cfg)
    network.save(checkpoint)
    config.save_config(cfg, os.path.join(folder, "config.json"))
    return network, cfg


def prepare_models(preset, folder, names, calibration_source, source=None):
    """Write (or keep) the artefacts of `names` for a preset's network into `folder`:
    random weights, or those of the trained checkpoint `source`; {runtime name: path}.
    calibration_source: (video, size) of the int8 calibration."""
    import export

    paths = artefact_paths(folder, names)
    kinds = sorted({RUNTIMES[name][2] for name, path in paths.items() if not exported(path)})
    if not kinds:
        return paths
    started = time.perf_counter()
    network, cfg = starting_network(preset, folder, source)
    with tempfile.TemporaryDirectory(prefix="bench-realtime-") as staging:
        saved_model = os.path.join(staging, "saved_model")
        if {"litert", "openvino", "openvino_int8"} & set(kinds):
            export.write_saved_model(network, saved_model)
        export_kinds(network, cfg, kinds, folder, saved_model, calibration_source)
    print(f"{preset}: {', '.join(kinds)} written in {time.perf_counter() - started:.0f} s",
          flush=True)
    return paths


def export_kinds(network, cfg, kinds, folder, saved_model, calibration_source):
    """export.export of each artefact kind (OpenVINO float32 and int8 in one conversion)."""
    import export

    path = {kind: os.path.join(folder, ARTEFACTS[kind][0]) for kind in ARTEFACTS}
    if "onnx" in kinds:
        export.export(network, cfg, "onnx", [(path["onnx"], "float32")])
    if "litert" in kinds:
        export.export(network, cfg, "litert", [(path["litert"], "float32")], saved_model)
    targets = [(path[kind], quantization) for kind, quantization in
               (("openvino", "float32"), ("openvino_int8", "int8")) if kind in kinds]
    if targets:
        inputs = None
        if "openvino_int8" in kinds:
            import logging

            import nncf

            nncf.set_log_level(logging.ERROR)
            inputs = calibration(cfg, *calibration_source)
        export.export(network, cfg, "openvino", targets, saved_model, calibration=inputs)


# --------------------------------------------------------------------------------------------
# One frame's stages (the worker processes)
# --------------------------------------------------------------------------------------------
class FramePlan:
    """How frames of one video shape become the network's input and people: the frame fitted
    into HEIGHT x WIDTH with its aspect ratio kept (rows x cols, the rest padded), and the
    config that single-scale, no-flip inference at that size runs with."""

    def __init__(self, cfg, frame_shape, size):
        import inference

        height, width = frame_shape[:2]
        rows, cols = size[0], max(int(round(width * size[0] / height)), 1)
        if cols > size[1]:
            rows, cols = max(int(round(height * size[1] / width)), 1), size[1]
        self.cfg = dataclasses.replace(cfg, inference_height=rows, scales=(1.0,),
                                       flip_test=False)
        self.frame_shape, self.size, self.fitted = tuple(frame_shape), tuple(size), (rows, cols)
        self.factors = (cols / width, rows / height)
        self.cells = (-(-rows // cfg.stride), -(-cols // cfg.stride))
        self.inference = inference

    def prepare(self, frame_bgr):
        """The network's input (1, HEIGHT, WIDTH, 3) float32 RGB of a BGR frame. Resizing
        commutes with the channel swap, so it is done on the smaller image."""
        return self.inference.prepare_input(frame_bgr, self.fitted, self.size, self.cfg,
                                            reverse_channels=True)[None]

    def parse(self, heatmaps, pafs):
        """inference's Estimate of the network's (heatmaps, pafs) of one frame."""
        rows, cols = self.cells
        maps = self.inference.ScaleMaps(heatmaps[0, :rows, :cols], pafs[0, :rows, :cols],
                                        self.factors)
        return self.inference.parse_image([maps], self.frame_shape, self.cfg)

    def oracle_maps(self, people):
        """The truth's maps (1, rows, cols, C) at the network's grid, as a perfect network
        would output them for people (P, NUM_JOINTS, 3) in frame pixels."""
        from data_generator import render_targets

        scaled = np.array(people, dtype=np.float64)
        for axis, factor in enumerate(self.factors):  # cv2.resize's pixel-centre convention
            scaled[:, :, axis] = (scaled[:, :, axis] + 0.5) * factor - 0.5
        grid = (self.size[0] // self.cfg.stride, self.size[1] // self.cfg.stride)
        heatmaps, pafs = render_targets(scaled, grid, self.cfg.stride, self.cfg.heatmap_sigma,
                                        self.cfg.paf_width)
        # The Gaussians' far tails are denormal floats, which a network's maps do not hold and
        # which slow OpenCV's filters some 15x (a 92x92x14 blur: 2.3 ms against 0.14 ms).
        return tuple(np.where(np.abs(maps) < TINY, 0.0, maps).astype(np.float32)[None]
                     for maps in (heatmaps, pafs))


class FrameReader:
    """Frames of a video file by cv2.VideoCapture, from the start again at its end."""

    def __init__(self, path):
        import cv2

        self.cv2, self.path = cv2, path
        self.capture, self.position = cv2.VideoCapture(path), 0
        if not self.capture.isOpened():
            raise SystemExit(f"{path}: OpenCV cannot open this video")

    def read(self):
        """(position in the video, BGR frame) of the next frame."""
        ok, frame = self.capture.read()
        if not ok:
            self.capture.release()
            self.capture, self.position = self.cv2.VideoCapture(self.path), 0
            ok, frame = self.capture.read()
            if not ok:
                raise SystemExit(f"{self.path}: no frame can be read from this video")
        self.position += 1
        return self.position - 1, frame

    def close(self):
        self.capture.release()


class Timing:
    """Seconds per stage summed over the timed frames, and the people found."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES + ("wait",), 0.0)
        self.frames, self.people, self.started = 0, 0, time.perf_counter()

    def add(self, people, **seconds):
        """Count one frame, its people and the seconds of its stages."""
        self.frames, self.people = self.frames + 1, self.people + len(people)
        for stage, value in seconds.items():
            self.seconds[stage] += value


def to_parse(oracle, position, maps):
    """The maps parsed for the frame at `position`: the truth's (oracle) or the network's."""
    return oracle[position] if oracle is not None else maps


def run_sequential(runtime, plan, video, oracle, budget):
    """Timing of frames read, resized, run, parsed and tracked one after another."""
    import tracking

    reader, tracker = FrameReader(video), tracking.Tracker(plan.cfg)
    warmup, frames, seconds, least = budget
    timing = Timing()
    for index in range(warmup + frames):
        if index == warmup:
            timing = Timing()
        started = time.perf_counter()
        position, frame = reader.read()
        decoded = time.perf_counter()
        batch = plan.prepare(frame)
        resized = time.perf_counter()
        maps = runtime.run(batch)
        ran = time.perf_counter()
        estimate = plan.parse(*to_parse(oracle, position, maps))
        parsed = time.perf_counter()
        tracker.update(estimate.people, index / VIDEO_FPS)
        # The warm-up frames count into a Timing that is replaced at index == warmup.
        timing.add(estimate.people, decode=decoded - started, resize=resized - decoded,
                   network=ran - resized, parse=parsed - ran,
                   track=time.perf_counter() - parsed)
        if index >= warmup and finished(timing, seconds, least):
            break
    reader.close()
    return timing, time.perf_counter() - timing.started


def finished(timing, seconds, least):
    return seconds > 0 and timing.frames >= least and \
        time.perf_counter() - timing.started >= seconds


def put(items, item, stop):
    """Put `item` into the queue `items`, unless `stop` is set first; whether it went in."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def take(items, stop):
    """The next item of the queue `items`, or None once `stop` is set."""
    while not stop.is_set():
        try:
            return items.get(timeout=0.05)
        except queue.Empty:
            continue
    return None


def reader_thread(plan, video, frames, stop):
    """Decode and resize into the queue `frames` until `stop` is set: items (sequence number,
    (position, batch, decode seconds, resize seconds))."""
    reader = FrameReader(video)
    try:
        for sequence in itertools.count():
            started = time.perf_counter()
            position, frame = reader.read()
            decoded = time.perf_counter()
            batch = plan.prepare(frame)
            if not put(frames, (sequence, (position, batch, decoded - started,
                                           time.perf_counter() - decoded)), stop):
                break
    finally:
        reader.close()


def network_thread(runtime, frames, results, stop):
    """Run the network on each item of `frames` into `results`: items (sequence number,
    (position, maps, decode, resize and network seconds)). OpenVINO, ONNX Runtime, LiteRT and
    TensorFlow let go of the GIL while they compute, so this overlaps the parsing of the frame
    before; with several OpenVINO streams, several of these threads run at once."""
    while not stop.is_set():
        item = take(frames, stop)
        if item is None:
            break
        sequence, (position, batch, decode_seconds, resize_seconds) = item
        started = time.perf_counter()
        maps = runtime.run(batch)
        if not put(results, (sequence, (position, maps, decode_seconds, resize_seconds,
                                        time.perf_counter() - started)), stop):
            break


def in_order(results):
    """The items of the queue `results` by sequence number: network threads running at once
    finish out of order, and tracking needs the frames in theirs."""
    waiting = {}
    for sequence in itertools.count():
        while sequence not in waiting:
            got, item = results.get(timeout=600)
            waiting[got] = item
        yield waiting.pop(sequence)


def run_pipelined(runtime, plan, video, oracle, budget, depth, streams=1):
    """Timing of frames in three stages that overlap: decode and resize on a reader thread,
    the network on `streams` threads of its own, parse and track on this one; queues of
    `depth` frames (at least `streams`) between them."""
    import tracking

    tracker = tracking.Tracker(plan.cfg)
    warmup, frames, seconds, least = budget
    stop = threading.Event()
    inputs, outputs = (queue.Queue(maxsize=max(depth, streams, 1)) for _ in range(2))
    workers = [threading.Thread(target=reader_thread, args=(plan, video, inputs, stop))] + [
        threading.Thread(target=network_thread, args=(runtime, inputs, outputs, stop))
        for _ in range(streams)]
    for worker in workers:
        worker.start()
    timing, ordered = Timing(), in_order(outputs)
    try:
        for index in range(warmup + frames):
            if index == warmup:
                timing = Timing()
            started = time.perf_counter()
            position, maps, decode_seconds, resize_seconds, network_seconds = next(ordered)
            got = time.perf_counter()
            estimate = plan.parse(*to_parse(oracle, position, maps))
            parsed = time.perf_counter()
            tracker.update(estimate.people, index / VIDEO_FPS)
            timing.add(estimate.people, decode=decode_seconds, resize=resize_seconds,
                       wait=got - started, network=network_seconds, parse=parsed - got,
                       track=time.perf_counter() - parsed)
            if index >= warmup and finished(timing, seconds, least):
                break
        return timing, time.perf_counter() - timing.started
    finally:
        stop.set()
        for worker in workers:
            worker.join()


# --------------------------------------------------------------------------------------------
# Rows (the worker processes)
# --------------------------------------------------------------------------------------------
def row_of(setting, timing, wall, pipelined):
    """The JSON row of one measurement."""
    frames = max(timing.frames, 1)
    row = dict(setting, pipelined=pipelined, frames=timing.frames,
               fps=round(timing.frames / wall, 2) if wall > 0 else None)
    row.update({f"{stage}_ms": round(1000 * timing.seconds[stage] / frames, 3)
                for stage in STAGES})
    if pipelined:
        row["wait_ms"] = round(1000 * timing.seconds["wait"] / frames, 3)
    row["people_per_frame"] = round(timing.people / frames, 2)
    row["load_1min"] = round(os.getloadavg()[0], 2)
    return row


def oracle_of(plan, video, wanted):
    """{position: truth's maps} of every frame of a synthetic video, or None (not wanted)."""
    if not wanted:
        return None
    truth = video + ".truth.npy"
    if not os.path.isfile(truth):
        return None
    return {position: plan.oracle_maps(people) for position, people in
            enumerate(np.load(truth))}


def measure_runtime(spec, preset, name, path, weights):
    """Rows of one preset's runtime over every size, maps and variant."""
    import runtimes

    runtime_name, precision, _, ov_precision = RUNTIMES[name]
    # Streams are OpenVINO's, each needs a thread; the sequential rows run one stream.
    stream_counts = sorted({1} | {count for count in spec.get("streams", [1])
                                  if runtime_name == "openvino" and count <= spec["threads"]})
    loaded = {count: runtimes.load(path, spec["threads"], ov_precision, count)
              for count in stream_counts}
    runtime, cfg = loaded[1]
    cfg = dataclasses.replace(cfg, input_interpolation=spec["input_interpolation"])
    if spec["fusion_upsample"] is not None:
        cfg = dataclasses.replace(cfg, fusion_upsample=spec["fusion_upsample"])
    budget = (spec["warmup"][preset], spec["frames"][preset], spec["seconds"],
              spec["min_frames"][preset])
    for size, video in spec["videos"]:
        reader = FrameReader(video)
        shape = reader.read()[1].shape
        reader.close()
        plan = FramePlan(cfg, shape, tuple(size))
        for maps in spec["maps"]:
            oracle = oracle_of(plan, video, maps == "oracle")
            if maps == "oracle" and oracle is None:
                continue  # --video FILE: no truth
            setting = {"preset": preset, "runtime": runtime_name, "precision": precision,
                       "threads": spec["threads"], "height": size[0], "width": size[1],
                       "maps": maps, "weights": weights,
                       "ov_precision": getattr(runtime, "precision", None),
                       "input_interpolation": cfg.input_interpolation,
                       "fusion_upsample": cfg.fusion_upsample,
                       "retained_memory": spec["retained"]}
            if "sequential" in spec["variants"]:
                measured = run_sequential(runtime, plan, video, oracle, budget)
                yield row_of(dict(setting, streams=1), *measured, False)
            if "pipelined" in spec["variants"]:
                for count in stream_counts:  # 1 always: the baseline of the others
                    measured = run_pipelined(loaded[count][0], plan, video, oracle, budget,
                                             spec["queue"], count)
                    yield row_of(dict(setting, streams=count), *measured, True)


def worker(spec_path):
    """Run the rows of one thread count (a process of its own) into spec["out"]."""
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    threads = spec["threads"]
    import utils

    spec["retained"] = bool(spec["retain_freed_memory"] and utils.retain_freed_memory())
    import cv2
    from tqdm import tqdm

    cv2.setNumThreads(threads)
    if any(name == "keras" for _, name, _, _ in spec["models"]):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    per_model = len(spec["videos"]) * len(spec["maps"]) * len(spec["variants"])
    rows = []
    with tqdm(total=per_model * len(spec["models"]), desc=f"{threads} thread(s)", unit="row",
              file=sys.stderr) as bar:
        for preset, name, path, weights in spec["models"]:
            for row in measure_runtime(spec, preset, name, path, weights):
                rows.append(row)
                tqdm.write(describe(row), file=sys.stdout)
                bar.update()
    with open(spec["out"], "w", encoding="utf-8") as handle:
        json.dump(rows, handle)


def describe(row):
    """One line of a row."""
    stages = " ".join(f"{stage} {row[stage + '_ms']:.2f}" for stage in STAGES)
    extra = f" wait {row['wait_ms']:.2f}" if row["pipelined"] else ""
    variant = f"pipelined {row.get('streams', 1)}s" if row["pipelined"] else "sequential  "
    return (f"  {row['preset']:5s} {row['runtime']:11s} {row['precision']:8s} "
            f"{row['threads']}t {row['height']}x{row['width']} {row['maps']:7s} "
            f"{variant} {row['fps']:8.2f} frames/s"
            f" | ms: {stages}{extra} | {row['people_per_frame']} people, {row['frames']} frames")


# --------------------------------------------------------------------------------------------
# Summary (the main process)
# --------------------------------------------------------------------------------------------
def find(rows, preset, runtime, precision, size, threads=2, maps="network", pipelined=False,
         streams=1):
    for row in rows:
        if (row["preset"], row["runtime"], row["precision"], (row["height"], row["width"]),
                row["threads"], row["maps"], row["pipelined"], row.get("streams", 1)) == (
                preset, runtime, precision, tuple(size), threads, maps, pipelined, streams):
            return row
    return None


def add_speedups(rows):
    """Each pipelined row's speedup: its frames/s over the same sequential row's."""
    for row in rows:
        if row["pipelined"]:
            plain = find(rows, row["preset"], row["runtime"], row["precision"],
                         (row["height"], row["width"]), row["threads"], row["maps"])
            if plain and plain["fps"]:
                row["speedup"] = round(row["fps"] / plain["fps"], 3)


def print_targets(rows):
    """Issue 21's targets and network-alone ratios, on the rows there are."""
    stream_counts = sorted({row.get("streams", 1) for row in rows})
    for maps in sorted({row["maps"] for row in rows}):
        for label, preset, precision, size, goal in TARGETS:
            for pipelined, streams in [(False, 1)] + [(True, count) for count in stream_counts]:
                row = find(rows, preset, "openvino", precision, size, 2, maps, pipelined,
                           streams)
                if row:
                    verdict = "met" if row["fps"] >= goal else "NOT met"
                    variant = f"pipelined, {streams} stream(s)" if pipelined else "sequential"
                    print(f"target {label} >= {goal} ({maps} maps, {variant}): "
                          f"{row['fps']:.1f} {verdict}")
    light_int8 = find(rows, "light", "openvino", "int8", (368, 368))
    for label, other, goal in (("paper Keras float32", ("paper", "keras", "float32"), 150),
                               ("light OpenVINO float32", ("light", "openvino", "float32"), 4)):
        row = find(rows, *other, (368, 368))
        if light_int8 and row:
            ratio = row["network_ms"] / light_int8["network_ms"]
            print(f"target network alone, 368x368 2 threads, light OpenVINO int8 vs {label} "
                  f">= {goal}x: {row['network_ms']:.2f} / {light_int8['network_ms']:.2f} ms = "
                  f"{ratio:.1f}x {'met' if ratio >= goal else 'NOT met'}")


def print_pipelining(rows):
    speedups = [row["speedup"] for row in rows if "speedup" in row]
    if not speedups:
        return
    faster = sum(value > 1.05 for value in speedups)
    best = max((row for row in rows if "speedup" in row), key=lambda row: row["speedup"])
    print(f"pipelining: median speedup {statistics.median(speedups):.2f}x over "
          f"{len(speedups)} settings, over 5 % faster in {faster}; best {best['speedup']:.2f}x "
          f"({best['preset']} {best['runtime']} {best['precision']} {best['threads']} "
          f"thread(s) {best['height']}x{best['width']})")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def run_worker(args, threads, models, video_paths, folder):
    """Rows of one thread count, measured in a process of its own."""
    spec = {"threads": threads, "models": models, "videos": list(video_paths.items()),
            "warmup": args.warmup, "frames": args.frames, "seconds": args.seconds,
            "min_frames": args.min_frames, "variants": args.variants, "maps": args.maps,
            "queue": args.queue, "streams": args.streams,
            "input_interpolation": args.input_interpolation,
            "retain_freed_memory": args.retain_freed_memory,
            "fusion_upsample": args.fusion_upsample,
            "out": os.path.join(folder, f"rows_{threads}.json")}
    spec_path = os.path.join(folder, f"spec_{threads}.json")
    with open(spec_path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    environment = dict(os.environ, **{name: str(threads) for name in common.THREAD_VARIABLES})
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec_path],
                   env=environment, check=True)
    with open(spec["out"], encoding="utf-8") as handle:
        return json.load(handle)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args.worker)
    load_before = [round(value, 2) for value in os.getloadavg()]
    print(f"load average before: {load_before} ({os.cpu_count()} CPUs)", flush=True)
    names = usable_runtimes(args.runtimes)
    folder = args.workdir or tempfile.mkdtemp(prefix="bench-realtime-")
    os.makedirs(folder, exist_ok=True)
    try:
        video_paths = videos(args, folder)
        largest = max(args.sizes, key=lambda size: size[0] * size[1])
        calibration_source = (video_paths[largest], largest, args.calibration_frames)
        models = [(preset, name, path, "trained" if preset in args.checkpoints else "random")
                  for preset in args.presets for name, path in
                  prepare_models(preset, preset_folder(folder, preset,
                                                       args.checkpoints.get(preset)),
                                 names, calibration_source,
                                 args.checkpoints.get(preset)).items()]
        rows = [row for threads in args.threads
                for row in run_worker(args, threads, models, video_paths, folder)]
    finally:
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
    add_speedups(rows)
    print_targets(rows)
    print_pipelining(rows)
    print(f"load average before: {load_before}, after: "
          f"{[round(value, 2) for value in os.getloadavg()]}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
