"""Throughput of the full training input pipeline (read, decode, augment, render, batch).

Runs ``dataset.make_dataset(cfg, "train", training=True)`` on the synthetic AIC set and
times how many samples per second come out of the batched, prefetched tf.data pipeline after a
warm-up, with tf.data's private thread pool limited to each of --threads in turn (and one
thread per op), all in one run, for each pipeline of --pipelines (tf: graph ops, the default;
numpy: the NumPy/OpenCV oracle in a tf.numpy_function). Each thread count is timed in its own
process kept on that many CPUs (os.sched_setaffinity, set before TensorFlow starts), so that
TensorFlow's own thread pools (XLA, Eigen) and the consuming Python thread share the same cores
and "one thread" means one core (--pin 0 limits only tf.data's pool, as the figures of issue
13 were taken). TensorFlow's intra-op pool is sized as train.py sizes it on a GPU host
(--intra_op_threads, default -1: one thread; 0 times TensorFlow's default pool instead).
The settings take turns in --repeats rounds, and each round also times two one-thread copies
at once, one per core: nothing is shared between them, so their summed rate
is the most two threads can reach on this machine (below 2x one where the cores slow each
other down, as two virtual CPUs on one physical core do). Medians over the rounds are
reported; ratios are taken within a round, so that a machine whose speed drifts affects both
sides alike. From the one- and two-thread rates it derives the serial fraction by Amdahl's
law (against 2x, and against the measured ceiling: the part the pipeline itself serialises),
projects the rate of a 16-core host and says what bounds it: the serial fraction, the CPU time
per sample, and (tf) the rate of the stages after the map alone (skip checks, batching,
consumer), which run one sample after another. It also reports how many cores each setting
kept busy (CPU time / wall time). The synthetic set is created when missing with

    python pre-process.py --synthetic N --seed 0 --data_dir DIR
    python pre-process.py --data_dir DIR --records_dir DIR/records

(DIR defaults to $TMPDIR/openpose_bench_synthetic, N to --images); pass --records_dir (and
--data_dir) to time other records, such as the real AIC set, instead. --profile also times each
stage of each pipeline for a few samples on one thread.

    python benchmarks/bench_pipeline.py                                 # paper preset, 368 x 368
    python benchmarks/bench_pipeline.py --pipelines tf,numpy            # both (about 6 min)
    python benchmarks/bench_pipeline.py --preset cpu                    # 160 x 160, stride 4

The tf pipeline compiles its XLA kernels the first time each size is met; the untimed
--compile_samples pass before each measurement meets most of them, and the JSON says how many
new ones were compiled while timing. The load average before and after is in the JSON: figures
from a busy machine are low, and their thread scaling means little. The last line printed is
JSON.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import multiprocessing
import os
import statistics
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
import dataset  # noqa: E402


# Issue 13's goals for the paper preset on a quiet 2-core machine: one thread at least the
# numpy pipeline's 295 samples/s, two threads at least 1.85 times one (under 8% serial).
ONE_THREAD_GOAL, SPEEDUP_GOAL, SERIAL_GOAL = 295.0, 1.85, 0.08


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


def thread_options(threads):
    """tf.data options that limit the private thread pool to `threads` (0: tf.data's default)."""
    import tensorflow as tf

    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return options


def measure_rate(cfg, samples, warmup_batches, threads, before_timing=None):
    """Rate, CPU cost and skips of the training batch_data on `threads` tf.data threads;
    before_timing() is called after the warm-up, right before the clock starts."""
    skip_counts = collections.Counter()
    batch_data = dataset.make_dataset(cfg, "train", True, skip_counts=skip_counts)
    iterator = iter(batch_data.with_options(thread_options(threads)))
    for _ in range(warmup_batches):
        next(iterator)
    batches = max(1, math.ceil(samples / cfg.batch_size))
    if before_timing is not None:
        before_timing()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        images, targets = next(iterator)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    assert images.shape[1] == cfg.input_size and targets["pafs"].shape[-1] == config.NUM_PAFS
    count = batches * cfg.batch_size
    return {"samples_per_second": round(count / seconds, 1),
            "cpu_ms_per_sample": round(cpu_seconds / count * 1e3, 3),
            "cores_busy": round(cpu_seconds / seconds, 2),
            "skipped": dict(skip_counts)}


def limit_cores(count, first=0):
    """Keep this process (and the threads it starts from now on) on `count` of its CPUs, from
    its `first`; 0 or more than it has: leave it alone. Returns the number of CPUs it may use."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if allowed and 0 < count < len(allowed):
        os.sched_setaffinity(0, allowed[first:first + count])
        return count
    return len(allowed) or os.cpu_count()


def child_rate(cfg, samples, warmup_batches, compile_samples, threads, pin=True, first_core=0,
               before_timing=None):
    """measure_rate in this (fresh) process, on `threads` CPUs from its `first_core` when pin,
    kernels compiled beforehand, TensorFlow's intra-op pool sized by cfg.intra_op_threads as on
    a GPU host (auto: 1; --intra_op_threads 0 times TensorFlow's default pool instead).

    Run through a spawned process (timed_in_child, copies_rate) so that the CPU limit is set
    before TensorFlow starts its thread pools: XLA's and Eigen's threads then share the same
    cores as tf.data's, and one thread means one core.
    """
    cores = limit_cores(threads if pin else 0, first_core)
    # As train.py sizes TensorFlow's intra-op pool on a GPU host (the host makes samples only).
    intra_op = dataset.configure_host_threads(cfg, accelerators=True)
    compile_kernels(cfg, compile_samples)
    return dict(measure_rate(cfg, samples, warmup_batches, threads, before_timing), cores=cores,
                intra_op_threads=intra_op)


def timed_in_child(function, *arguments):
    """function(*arguments) in a freshly spawned Python process; returns its result."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, arguments)


def compile_kernels(cfg, samples):
    """Draw `samples` training samples untimed, so the XLA kernels are compiled beforehand."""
    if cfg.pipeline == "tf" and samples > 0:
        for _ in dataset.make_dataset(cfg, "train", True).take(
                max(1, samples // cfg.batch_size)):
            pass


def profile_tf_stages(cfg, samples):
    """CPU milliseconds per sample of the tf pipeline's stages, one thread, one after another.

    Each stage is timed as a tf.function of the stages up to it (so as the graph ops run in
    tf.data, call overhead included) over `samples` records, after one untimed pass that
    compiles the XLA kernels; the differences are the stages' costs.
    """
    import tensorflow as tf
    import tf_pipeline as tp

    records = data_generator.load_records(cfg, "train")
    tensors = tp.RecordTensors(records)

    def opened(draw, index):
        path, pattern, size, keypoints, boxes = tensors.record(index)
        return tp.open_image(size, path, pattern), keypoints, boxes

    def planned(draw, index):
        (contents, kind, reason, shape, whole, width, height), keypoints, boxes = \
            opened(draw, index)
        draws = tp.sample_draws(cfg.seed, 0, draw, index)
        plan = tp.planned(cfg, keypoints, boxes, width, height, shape, kind == 1, draws)
        return contents, kind, whole, plan, draws

    def decoded(draw, index):
        contents, kind, whole, plan, draws = planned(draw, index)
        return tp.decode_window(contents, kind, plan[3], whole, plan[4]), plan, draws

    def warped(draw, index):
        pixels, plan, draws = decoded(draw, index)
        return tp.warp_window(cfg, pixels, plan[5], draws[6:]), plan[:3]

    stages = (("call", lambda draw, index: index + 1), ("read_and_check", opened),
              ("plan_targets_mask", planned), ("decode_window", decoded), ("warp_jitter", warped))
    arguments = [(tf.constant(number, tf.int64), tf.constant(number % len(records), tf.int64))
                 for number in range(samples)]
    totals = {}
    for name, stage in stages:
        function = tf.function(stage)
        for pair in arguments:  # compiles every kernel these samples need
            function(*pair)
        start = time.process_time()
        for pair in arguments:
            function(*pair)
        totals[name] = (time.process_time() - start) / samples * 1e3
    names = [name for name, _ in stages]
    result = {name: round(totals[name] - (totals[names[number - 1]] if number else 0.0), 3)
              for number, name in enumerate(names)}
    result["total"] = round(totals[names[-1]], 3)
    return result


def profile_stages(cfg, samples):
    """Mean milliseconds per sample of each stage of the numpy path, one after another on one
    thread (wall time: OpenCV may use more than one core)."""
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


def serial_stage_rate(cfg, samples, batches):
    """Samples per second through the stages after the map alone (tf pipeline): the skip checks
    (tf_pipeline.checked_samples), batching and the consuming Python loop, on samples
    made beforehand and cached, with every core. These run one sample after another, so no
    number of cores takes the pipeline past this rate."""
    import tensorflow as tf
    import tf_pipeline

    records = data_generator.load_records(cfg, "train")
    indices = tf.data.Dataset.range(len(records)).repeat().enumerate().take(samples)
    made = tf_pipeline.made_samples(cfg, records, indices, True, 0).cache()
    for _ in made:  # fills the cache
        pass
    # Draw numbers renumbered after each pass, so the skip check sees no gap.
    stream = made.repeat().enumerate().map(lambda number, sample: (*sample[:6], number))
    batch_data = dataset.batched(tf_pipeline.checked_samples(stream), cfg.batch_size, True)
    iterator = iter(batch_data.prefetch(tf.data.AUTOTUNE))
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return round(batches * cfg.batch_size / (time.perf_counter() - start), 1)


def copy_child(cfg, arguments, core, barrier, results):
    """One of the simultaneous one-thread copies (copies_rate): pinned to CPU `core`, kernels
    compiled and warmed up, then timed once every copy is ready."""
    results.put(child_rate(cfg, arguments.samples, arguments.warmup_batches,
                           arguments.compile_samples, 1, first_core=core,
                           before_timing=barrier.wait))


def copies_rate(cfg, arguments, copies=2):
    """Summed rate of `copies` one-thread pipelines timed at the same time, each in its own
    process on its own CPU.

    Nothing is shared between them and nothing is serial, so the sum is what these cores give
    this work when all of them are busy: the ceiling of the 2-thread rate on this machine. It
    is below `copies` times the one-thread rate where the cores slow each other down (shared
    caches, memory bandwidth, or virtual CPUs that are one physical core's two threads).
    """
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(copies), context.Queue()
    workers = [context.Process(target=copy_child, args=(cfg, arguments, core, barrier, results))
               for core in range(copies)]
    for worker in workers:
        worker.start()
    rates = [results.get()["samples_per_second"] for _ in workers]
    for worker in workers:
        worker.join()
    return round(sum(rates), 1)


def time_round(cfg, arguments, thread_counts, with_copies):
    """One round: each thread count timed in its own process on that many cores, then (when
    with_copies) two simultaneous one-thread copies; printed as it goes."""
    row = {}
    for threads in thread_counts:
        row[threads] = timed_in_child(child_rate, cfg, arguments.samples,
                                      arguments.warmup_batches, arguments.compile_samples,
                                      threads, bool(arguments.pin))
        print(f"{cfg.pipeline} pipeline, {threads or 'default'} thread(s): {row[threads]}",
              flush=True)
    if with_copies:
        row["copies"] = copies_rate(cfg, arguments)
        print(f"{cfg.pipeline} pipeline, two one-thread copies at once, one per core: "
              f"{row['copies']} samples/s together", flush=True)
    return row


def median_results(rows, threads):
    """The measure_rate result of `threads` with each figure the median over the rounds, and
    the rounds' rates."""
    results = [row[threads] for row in rows]
    merged = {key: round(statistics.median(result[key] for result in results), 3)
              for key in ("samples_per_second", "cpu_ms_per_sample", "cores_busy")}
    merged["skipped"] = results[-1]["skipped"]
    merged["cores"] = results[-1]["cores"]
    merged["intra_op_threads"] = results[-1]["intra_op_threads"]
    merged["rounds"] = [result["samples_per_second"] for result in results]
    return merged


def time_pipeline(cfg, arguments, thread_counts):
    """({threads: median result}, summary) of cfg.pipeline over arguments.repeats rounds.

    The settings take turns within each round, so that a machine whose speed drifts during the
    run (a shared virtual machine) affects them alike; ratios are taken within a round, and
    their median reported.
    """
    with_copies = (bool(arguments.pin) and arguments.copies and 1 in thread_counts
                   and len(os.sched_getaffinity(0)) >= 2)
    rows = [time_round(cfg, arguments, thread_counts, with_copies)
            for _ in range(arguments.repeats)]
    results = {threads: median_results(rows, threads) for threads in thread_counts}
    summary = scaling_summary(rows, results)
    if cfg.pipeline == "tf":
        summary["serial_stages_alone"] = timed_in_child(
            serial_stage_rate, cfg, 200, max(100, arguments.samples // cfg.batch_size))
    summary["bound"] = describe_bound(summary, results)
    if summary["two_thread_speedup"] is not None and cfg.preset == "paper":
        # Issue 13's goals: today's numpy rate on one thread, under 8% serial.
        summary["goals_met"] = {
            "one_thread_at_least_295": results[1]["samples_per_second"] >= ONE_THREAD_GOAL,
            "two_threads_at_least_1.85x": summary["two_thread_speedup"] >= SPEEDUP_GOAL}
        if summary.get("serial_fraction_on_this_hardware") is not None:
            summary["goals_met"]["under_8_percent_serial_on_this_hardware"] = (
                summary["serial_fraction_on_this_hardware"] < SERIAL_GOAL)
    print(f"{cfg.pipeline} pipeline: {summary}", flush=True)
    return results, summary


def scaling_summary(rows, results):
    """Speed-up, serial fractions and the 16-core projection from the rounds.

    two_thread_speedup: median of the rounds' 2-thread / 1-thread rates. hardware_ceiling:
    median of the two simultaneous copies' rate / the 1-thread rate (2 on cores that do not slow
    each other, and at most 2). serial_fraction (Amdahl against 2 cores) counts any slowdown as
    serial; serial_fraction_on_this_hardware is Amdahl against the ceiling, the part of a
    sample's time the pipeline itself serialises, and the projection uses it.
    """
    if not all(1 in row and 2 in row for row in rows):
        return {"two_thread_speedup": None, "serial_fraction": None, "projected_16_cores": None}
    speedup = statistics.median(row[2]["samples_per_second"] / row[1]["samples_per_second"]
                                for row in rows)
    summary = {"two_thread_speedup": round(speedup, 3),
               "serial_fraction": round(serial_fraction(speedup, 2.0), 4)}
    serial = summary["serial_fraction"]
    if all("copies" in row for row in rows):
        # Above 2 is drift between the timings: two cores do not give more than twice one.
        ceiling = min(2.0, statistics.median(row["copies"] / row[1]["samples_per_second"]
                                             for row in rows))
        summary["hardware_ceiling"] = round(ceiling, 3)
        summary["share_of_ceiling"] = round(statistics.median(
            row[2]["samples_per_second"] / row["copies"] for row in rows), 3)
        serial = serial_fraction(speedup, ceiling)
        summary["serial_fraction_on_this_hardware"] = round(serial, 4)
    one = results[1]["samples_per_second"]
    summary["projected_16_cores"] = round(one / (serial + (1.0 - serial) / 16), 1)
    return summary


def serial_fraction(speedup, ceiling):
    """Amdahl's serial fraction s of a two-worker speed-up when two workers with nothing serial
    would give `ceiling`: speedup = 1 / (s + (1 - s) / ceiling), clipped to 0..1."""
    if ceiling <= 1.0:
        return 0.0
    serial = (1.0 / speedup - 1.0 / ceiling) / (1.0 - 1.0 / ceiling)
    return min(max(serial, 0.0), 1.0)


def describe_bound(summary, results):
    """One sentence: the 16-core projection and what limits it."""
    if summary["serial_fraction"] is None:
        return "time 1 and 2 threads (--threads 1,2) to project a 16-core host"
    one = results[1]["samples_per_second"]
    serial = summary.get("serial_fraction_on_this_hardware", summary["serial_fraction"])
    cpu_ms = results[1]["cpu_ms_per_sample"]
    text = (f"16 cores: {summary['projected_16_cores']} samples/s by Amdahl's law from the "
            f"median 1- and 2-thread rates ({serial:.1%} of a sample's time serial")
    if "hardware_ceiling" in summary:
        text += (f", measured against what two simultaneous one-thread copies reach here, "
                 f"{summary['hardware_ceiling']}x one; against 2x it would be "
                 f"{summary['serial_fraction']:.1%}")
    text += (f"); the work itself, {cpu_ms} CPU ms per sample, would allow "
             f"{round(16e3 / cpu_ms)} samples/s on 16 cores with nothing serial")
    if serial > 0:
        text += f", and the serial part caps any number of cores at {round(one / serial)}"
    if summary.get("serial_stages_alone"):
        text += (f"; the stages after the map alone (skip checks, batching, consumer) run "
                 f"at {summary['serial_stages_alone']} samples/s")
    return text + (". Not modelled: file reads from a slower disk, memory bandwidth, and the "
                   "training step's own CPU use.")


def parse_arguments(argv=None):
    """(arguments, cfg) of the command line; cfg points at the synthetic set unless records
    were named."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000,
                        help="samples to time per setting (default 2000)")
    parser.add_argument("--warmup_batches", type=int, default=10,
                        help="batches drawn before each timing starts (default 10)")
    parser.add_argument("--threads", default="1,2",
                        help="tf.data private thread pool sizes to time, 0 = tf.data's default "
                             "(default 1,2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds in which the settings take turns; medians are reported "
                             "(default 3)")
    parser.add_argument("--copies", type=int, default=1, choices=(0, 1),
                        help="1: each round also times two one-thread copies at once, one per "
                             "core, as this machine's ceiling for two threads (default 1)")
    parser.add_argument("--pin", type=int, default=1, choices=(0, 1),
                        help="1: keep each timing on as many CPUs as it has threads; 0: limit "
                             "only tf.data's thread pool, as issue 13's figures were taken "
                             "(default 1)")
    parser.add_argument("--pipelines", default="tf",
                        help="pipelines to time in this run: tf, numpy or tf,numpy (default tf)")
    parser.add_argument("--compile_samples", type=int, default=1000,
                        help="untimed samples drawn first so the XLA kernels get compiled "
                             "(default 1000)")
    parser.add_argument("--images", type=int, default=500,
                        help="synthetic images to create when the set is missing (default 500)")
    parser.add_argument("--synthetic_dir", default=os.path.join(
        tempfile.gettempdir(), "openpose_bench_synthetic"),
        help="where the synthetic set lives or is created")
    parser.add_argument("--profile", type=int, default=200, metavar="N",
                        help="samples for the one-thread stage profiles of the pipelines timed; "
                             "0 skips them (default 200)")
    config.add_config_arguments(parser)
    arguments = parser.parse_args(argv)
    cfg = config.config_from_args(arguments)
    if arguments.cfg_records_dir is None:  # no records named: use (or make) the synthetic set
        records_dir = ensure_synthetic_set(arguments.synthetic_dir, arguments.images)
        cfg = dataclasses.replace(cfg, data_dir=arguments.synthetic_dir, records_dir=records_dir)
    return arguments, cfg


def main(argv=None):
    arguments, cfg = parse_arguments(argv)
    thread_counts = [int(value) for value in arguments.threads.split(",")]
    load_before = os.getloadavg()
    results, projections = {}, {}
    for pipeline in arguments.pipelines.split(","):
        results[pipeline], projections[pipeline] = time_pipeline(
            dataclasses.replace(cfg, pipeline=pipeline), arguments, thread_counts)
    load_after = os.getloadavg()
    for pipeline, summary in projections.items():
        print(f"{pipeline} pipeline, what bounds it: {summary['bound']}", flush=True)
    profiles = {}
    if arguments.profile:
        for pipeline in arguments.pipelines.split(","):
            profile = profile_tf_stages if pipeline == "tf" else profile_stages
            profiles[pipeline] = profile(dataclasses.replace(cfg, pipeline=pipeline),
                                         arguments.profile)
            print(f"{pipeline} pipeline, one thread, stage by stage (CPU ms per sample): "
                  f"{profiles[pipeline]}", flush=True)
    print(json.dumps({
        "preset": cfg.preset, "input_size": cfg.input_size, "stride": cfg.stride,
        "batch_size": cfg.batch_size, "samples": arguments.samples, "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "results": {pipeline: {str(threads): result for threads, result in by_threads.items()}
                    for pipeline, by_threads in results.items()},
        "amdahl": projections, "one_thread_stage_ms_per_sample": profiles}))


if __name__ == "__main__":
    main()
