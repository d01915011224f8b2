"""Throughput of the full training input pipeline (read, decode, augment, render, batch).

Runs ``data_generator.make_dataset(cfg, "train", training=True)`` on the synthetic AIC set and
times how many samples per second come out of the batched, prefetched tf.data pipeline after a
warm-up. The synthetic set is created when missing with

    python pre-process.py --synthetic N --seed 0 --data_dir DIR
    python pre-process.py --data_dir DIR --records_dir DIR/records

(DIR defaults to $TMPDIR/openpose_bench_synthetic, N to --images); pass --records_dir (and
--data_dir) to time other records, such as the real AIC set, instead. --profile also times each
stage of one sample on one thread (decode, warp, colour jitter, targets, mask), which shows what
bounds the pipeline.

    python benchmarks/bench_pipeline.py --samples 2000                  # paper preset, 368 x 368
    python benchmarks/bench_pipeline.py --samples 2000 --preset cpu     # 192 x 192, stride 4

The last line printed is JSON with the rate, the load average and the stage times.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import config  # noqa: E402
import data_generator  # noqa: E402


def ensure_synthetic_set(data_dir, images):
    """Create the synthetic set and its records under data_dir unless train.jsonl exists."""
    records_dir = os.path.join(data_dir, "records")
    if os.path.isfile(os.path.join(records_dir, "train.jsonl")):
        return records_dir
    script = os.path.join(ROOT, "pre-process.py")
    for arguments in (["--synthetic", str(images), "--seed", "0", "--data_dir", data_dir],
                      ["--data_dir", data_dir, "--records_dir", records_dir]):
        print("$ python pre-process.py " + " ".join(arguments), flush=True)
        subprocess.run([sys.executable, script, *arguments], check=True, cwd=ROOT)
    return records_dir


def measure_rate(cfg, samples, warmup_batches):
    """(samples per second, skip counts) of the training dataset after warm-up batches."""
    skip_counts = collections.Counter()
    dataset = data_generator.make_dataset(cfg, "train", True, skip_counts=skip_counts)
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    batches = max(1, math.ceil(samples / cfg.batch_size))
    start = time.perf_counter()
    for _ in range(batches):
        images, targets = next(iterator)
    seconds = time.perf_counter() - start
    assert images.shape[1] == cfg.input_size and targets["pafs"].shape[-1] == config.NUM_PAFS
    return batches * cfg.batch_size / seconds, dict(skip_counts)


def profile_stages(cfg, samples):
    """Mean milliseconds per sample of each stage, run one after another on one thread."""
    records = data_generator.load_records(cfg, "train")
    timings = collections.defaultdict(float)
    for number in range(samples):
        index = number % len(records)
        rng = np.random.default_rng((cfg.seed, 0, number))
        keypoints, boxes = records.people(index)
        path, (width, height) = records.paths[index], records.sizes[index]
        clock = time.perf_counter()

        def lap(name):
            nonlocal clock
            now = time.perf_counter()
            timings[name] += now - clock
            clock = now

        matrix, flipped = data_generator.training_transform(
            cfg, keypoints, boxes, width, height, rng)
        scale = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
        factor = data_generator.reduction_factor(path, scale)
        lap("transform")
        image = data_generator.decode_image(path, factor)
        timings["reduced_decodes"] += factor > 1
        lap("decode")
        from_decoded = data_generator.reduced_to_source(image, width, height, path, factor)
        image = data_generator.warp_image(image, matrix @ from_decoded, cfg.input_size,
                                          cfg.pad_value)
        lap("warp")
        image = data_generator.jitter_colors(image, cfg.color_jitter, rng)
        lap("color_jitter")
        data_generator.sample_targets(cfg, matrix, flipped, keypoints, boxes, width, height)
        lap("targets_and_mask")
    reduced = timings.pop("reduced_decodes")
    result = {name: round(seconds / samples * 1e3, 3) for name, seconds in timings.items()}
    result["total"] = round(sum(result.values()), 3)
    result["reduced_decode_fraction"] = round(reduced / samples, 3)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="samples to time (default 2000)")
    parser.add_argument("--warmup_batches", type=int, default=10,
                        help="batches drawn before timing starts (default 10)")
    parser.add_argument("--images", type=int, default=500,
                        help="synthetic images to create when the set is missing (default 500)")
    parser.add_argument("--synthetic_dir", default=os.path.join(
        tempfile.gettempdir(), "openpose_bench_synthetic"),
        help="where the synthetic set lives or is created")
    parser.add_argument("--profile", type=int, default=200, metavar="N",
                        help="samples for the one-thread stage profile; 0 skips it (default 200)")
    config.add_config_arguments(parser)
    arguments = parser.parse_args(argv)
    cfg = config.config_from_args(arguments)
    if arguments.cfg_records_dir is None:  # no records named: use (or make) the synthetic set
        records_dir = ensure_synthetic_set(arguments.synthetic_dir, arguments.images)
        cfg = dataclasses.replace(cfg, data_dir=arguments.synthetic_dir, records_dir=records_dir)
    load_before = os.getloadavg()
    rate, skips = measure_rate(cfg, arguments.samples, arguments.warmup_batches)
    load_after = os.getloadavg()
    stages = profile_stages(cfg, arguments.profile) if arguments.profile else {}
    result = {
        "preset": cfg.preset, "input_size": cfg.input_size, "stride": cfg.stride,
        "batch_size": cfg.batch_size, "samples": arguments.samples,
        "samples_per_second": round(rate, 1), "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "skipped": skips, "one_thread_ms_per_sample": stages,
    }
    if stages:
        print(f"one thread: {stages['total']:.2f} ms/sample -> "
              f"{1e3 / stages['total']:.0f} samples/s per core; stages {stages}")
    print(f"pipeline: {rate:.1f} samples/s at {cfg.input_size}x{cfg.input_size} "
          f"(preset {cfg.preset}, load {load_before[0]:.2f} before, {load_after[0]:.2f} after)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
