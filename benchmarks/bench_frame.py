"""A real-time frame's path outside the network: CPU milliseconds per stage on one core.

    python benchmarks/bench_frame.py                   # light, 368x368 and 368x656, 4 variants
    python benchmarks/bench_frame.py --interpolations area,cubic --retain on,off --rounds 7
    python benchmarks/bench_frame.py --interpolations cubic --retain on --fusion_upsamples 1,2
    python benchmarks/bench_frame.py --sizes 368x656 --workdir /tmp/realtime  # reuse its videos

What bench_realtime.py times around the network, stage by stage, without the network: each
frame of a synthetic video (bench_realtime's people walking, --video_height rows, kept in
--workdir) is decoded (cv2.VideoCapture.read), resized (inference.prepare_input, BGR to RGB
on the small image), and its truth's maps, as a perfect network would output them at the grid
(bench_realtime.FramePlan.oracle_maps, made before the timing), are fused (inference.fused_maps)
and parsed: peaks (parsing.check_maps and find_peaks), limbs (score_limbs and match_limbs) and
assemble (assemble_people, people_from_members, clipping), then tracked (tracking.Tracker with
One-Euro smoothing). Together these are inference.parse_image's work, and the people are
checked to be the same.

A variant is an input_interpolation (--interpolations: area, the default, or cubic, the
original's, or linear), whether the process keeps its freed memory (--retain:
utils.retain_freed_memory, the retain_freed_memory field that demo.py and evaluate.py follow)
and a fusion_upsample (--fusion_upsamples; default 2, the presets'; 1 parses the one scale on
the network's own grid).
Each variant runs in a process of its own (the memory setting is the whole process's and cannot
be undone), one round of --frames frames after --warmup ones, and the variants take turns for
--rounds rounds so that a machine whose speed drifts treats them alike. A stage's figure is the
median over the rounds of its mean CPU milliseconds per frame (time.process_time: this process
alone, the kernel's time for its page faults included; one thread for OpenCV and numpy). The
last line is JSON: a list of rows {preset, height, width, input_interpolation,
retain_freed_memory, fusion_upsample, rounds, frames, people_per_frame, <stage>_ms..., total_ms}.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import common  # noqa: E402 - puts the repository on sys.path

STAGES = ("decode", "resize", "fuse", "peaks", "limbs", "assemble", "track")
INTERPOLATIONS = ("area", "cubic", "linear")
RETAIN = {"on": True, "off": False}


def build_parser():
    import bench_realtime

    first, commands, rest = __doc__.split("\n\n", 2)
    parser = argparse.ArgumentParser(description=first + "\n\n" + commands, epilog=rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--preset", default="light", choices=bench_realtime.PRESETS,
        help="whose stride and parser settings (default light)")
    add("--sizes", type=lambda text: bench_realtime.listed(text, convert=bench_realtime.size_of),
        default=bench_realtime.SIZES, help=f"network inputs HEIGHTxWIDTH "
                                           f"(default {bench_realtime.SIZES})")
    add("--interpolations", type=lambda text: bench_realtime.listed(text, INTERPOLATIONS),
        default=["area", "cubic"], help="input_interpolation values (default area,cubic)")
    add("--retain", type=lambda text: bench_realtime.listed(text, RETAIN), default=["off", "on"],
        help="retain_freed_memory off and/or on (default both)")
    add("--fusion_upsamples", type=lambda text: bench_realtime.listed(text, convert=int),
        default=[2], help="fusion_upsample values (default 2)")
    add("--rounds", type=int, default=5, help="turns of every variant (default 5)")
    add("--frames", type=int, default=100, help="timed frames per round (default 100)")
    add("--warmup", type=int, default=5, help="untimed frames first (default 5)")
    add("--video_height", type=int, default=720, help="rows of the synthetic video (720)")
    add("--video_frames", type=int, default=120, help="frames of the synthetic video (120)")
    add("--workdir", metavar="DIR", help="keep the videos here and reuse them (default: a "
                                         "temporary folder)")
    add("--worker", help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------------------------
# One variant's round (a worker process)
# --------------------------------------------------------------------------------------------
def timed_frame(plan, frame, maps, tracker, index):
    """(people, {stage: CPU seconds}) of one frame through every stage but the network."""
    import inference
    import parsing

    clock, seconds = time.process_time, {}
    started = clock()
    batch = plan.prepare(frame)
    seconds["resize"], started = clock() - started, clock()
    del batch  # The network's input: made and timed, then not needed without a network.
    rows, cols = plan.cells
    scale_maps = inference.ScaleMaps(maps[0][0, :rows, :cols], maps[1][0, :rows, :cols],
                                     plan.factors)
    heatmaps, pafs, mapping = inference.fused_maps([scale_maps], plan.frame_shape, plan.cfg)
    seconds["fuse"], started = clock() - started, clock()
    parsing.check_maps(heatmaps, pafs)
    peaks = parsing.find_peaks(heatmaps, plan.cfg, mapping["smoothing"])
    seconds["peaks"], started = clock() - started, clock()
    candidates = parsing.score_limbs(peaks, pafs, plan.cfg,
                                     min_length=mapping["min_limb_length"])
    connections = parsing.match_limbs(candidates, peaks, plan.cfg.limb_matching)
    seconds["limbs"], started = clock() - started, clock()
    members, _ = parsing.assemble_people(peaks, connections, plan.cfg)
    people = parsing.people_from_members(peaks, members, mapping["stride"], mapping["scale"],
                                         mapping["offset"])
    people = inference.clip_to_image(people, *plan.frame_shape[:2])
    seconds["assemble"], started = clock() - started, clock()
    tracker.update(people, index / 25.0)
    seconds["track"] = clock() - started
    return people, seconds


def same_people(plan, maps, people):
    """Whether the stages above found what inference.parse_image finds on the same maps."""
    import numpy as np

    estimate = plan.parse(*maps)
    return estimate.people.shape == people.shape and np.allclose(estimate.people, people)


def run_round(spec, plan, video, oracle):
    """{stage: mean CPU ms per frame, frames, people_per_frame} of one round at one size."""
    import bench_realtime
    import tracking

    reader, tracker = bench_realtime.FrameReader(video), tracking.Tracker(plan.cfg)
    totals, people_found = dict.fromkeys(STAGES, 0.0), 0
    for index in range(spec["warmup"] + spec["frames"]):
        started = time.process_time()
        position, frame = reader.read()
        decode = time.process_time() - started
        people, seconds = timed_frame(plan, frame, oracle[position], tracker, index)
        if index == 0 and not same_people(plan, oracle[position], people):
            raise SystemExit("bench_frame: the timed stages found other people than "
                             "inference.parse_image")
        if index >= spec["warmup"]:
            people_found += len(people)
            for stage, value in dict(seconds, decode=decode).items():
                totals[stage] += value
    reader.close()
    frames = spec["frames"]
    row = {f"{stage}_ms": 1000.0 * totals[stage] / frames for stage in STAGES}
    return dict(row, frames=frames, people_per_frame=people_found / frames)


def worker(spec_path):
    """One variant's round at every size, written to the spec's out file."""
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    import utils

    retained = utils.retain_freed_memory() if spec["retain"] else False
    import cv2

    import bench_realtime
    import config

    cv2.setNumThreads(1)
    cfg = dataclasses.replace(config.make_config(spec["preset"]),
                              input_interpolation=spec["interpolation"],
                              fusion_upsample=spec["fusion_upsample"])
    rows = []
    for size, video in spec["videos"]:
        reader = bench_realtime.FrameReader(video)
        frame_shape = reader.read()[1].shape
        reader.close()
        plan = bench_realtime.FramePlan(cfg, frame_shape, tuple(size))
        oracle = bench_realtime.oracle_of(plan, video, True)
        rows.append(dict(run_round(spec, plan, video, oracle), height=size[0], width=size[1],
                         retained=retained))
    with open(spec["out"], "w", encoding="utf-8") as handle:
        json.dump(rows, handle)


# --------------------------------------------------------------------------------------------
# The variants' turns and their medians (the main process)
# --------------------------------------------------------------------------------------------
def run_variant(args, variant, video_paths, folder):
    """The rows (one per size) of one round of variant (interpolation, retain, upsample), from
    a process of its own."""
    interpolation, retain, upsample = variant
    name = f"{interpolation}_{retain}_{upsample}"
    spec = {"preset": args.preset, "interpolation": interpolation, "retain": RETAIN[retain],
            "fusion_upsample": upsample, "warmup": args.warmup, "frames": args.frames,
            "videos": [(list(size), path) for size, path in video_paths.items()],
            "out": os.path.join(folder, f"frame_rows_{name}.json")}
    spec_path = os.path.join(folder, f"frame_spec_{name}.json")
    with open(spec_path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    environment = dict(os.environ, **{name: "1" for name in common.THREAD_VARIABLES})
    subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec_path],
                   check=True, env=environment)
    with open(spec["out"], encoding="utf-8") as handle:
        return json.load(handle)


def median_rows(rounds, preset):
    """One row per (size, variant): every figure's median over the rounds."""
    grouped = {}
    for variant, rows in rounds:
        for row in rows:
            grouped.setdefault((row["height"], row["width"]) + tuple(variant), []).append(row)
    table = []
    for (height, width, interpolation, retain, upsample), rows in grouped.items():
        row = {"preset": preset, "height": height, "width": width,
               "input_interpolation": interpolation, "retain_freed_memory": retain == "on",
               "fusion_upsample": upsample,
               "retained": all(item["retained"] for item in rows), "rounds": len(rows),
               "frames": rows[0]["frames"]}
        for key in [f"{stage}_ms" for stage in STAGES] + ["people_per_frame"]:
            row[key] = round(statistics.median(item[key] for item in rows), 3)
        totals = [sum(item[f"{stage}_ms"] for stage in STAGES) for item in rows]
        row["total_ms"] = round(statistics.median(totals), 3)
        table.append(row)
    return table


def describe(row):
    stages = " ".join(f"{stage} {row[stage + '_ms']:.2f}" for stage in STAGES)
    memory = "retained" if row["retain_freed_memory"] else "glibc default"
    return (f"{row['height']}x{row['width']} {row['input_interpolation']:6s} {memory:13s} "
            f"fusion x{row['fusion_upsample']} "
            f"total {row['total_ms']:6.2f} ms | {stages}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args.worker)
    import bench_realtime

    folder = args.workdir or tempfile.mkdtemp(prefix="bench-frame-")
    os.makedirs(folder, exist_ok=True)
    video_args = types.SimpleNamespace(sizes=args.sizes, video=None,
                                       video_height=args.video_height,
                                       video_frames=args.video_frames)
    video_paths = bench_realtime.videos(video_args, folder)
    variants = list(itertools.product(args.interpolations, args.retain, args.fusion_upsamples))
    rounds = []
    from tqdm import tqdm

    for _, variant in tqdm(list(itertools.product(range(args.rounds), variants)),
                           desc="rounds", unit="variant", file=sys.stderr):
        rounds.append((variant, run_variant(args, variant, video_paths, folder)))
    rows = median_rows(rounds, args.preset)
    for row in rows:
        print(describe(row))
    if any(row["retain_freed_memory"] and not row["retained"] for row in rows):
        print("note: glibc's mallopt was not available, so the retained rows kept the default")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
