"""Training speed (images/s) of the paper and cpu presets, and forward latency of the paper model.

    python benchmarks/bench_train.py                      # both presets on this machine
    python benchmarks/bench_train.py --mixed_precision --jit_compile   # e.g. on a GPU
    python benchmarks/bench_train.py --presets cpu --steps 10
    python benchmarks/bench_train.py --presets cpu,light --steps 12 --xla_pairs 5 --latency_runs 0

Training runs train.py's own training model (loss over all stages, optimiser with the stage
learning-rate multipliers, NaN guard) through Keras fit on random images and maps of the right
shapes (dataset.synthetic_dataset: one cached batch, so the input pipeline costs nothing; the
figure is the network's speed, not data loading's). Each preset runs `--warmup` steps (tracing
included) before `--steps` timed ones. Forward latency: the paper network on one 368x368 image
in a tf.function, median of `--latency_runs` calls after one warm-up call. Mixed precision is
mixed_float16 on a GPU and mixed_bfloat16 on a CPU. The machine's load average is reported
because other processes share the CPU. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import config  # noqa: E402
import dataset  # noqa: E402
import model  # noqa: E402
import trainer as trainer_module  # noqa: E402


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="paper,cpu", help="comma-separated presets to time")
    parser.add_argument("--paper_batch", type=int, default=0,
                        help="batch of the paper preset (0: 2 on a CPU, the preset's 10 on a GPU)")
    parser.add_argument("--cpu_batch", type=int, default=0,
                        help="batch of the cpu preset (0: the preset's)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per preset")
    parser.add_argument("--latency_runs", type=int, default=5,
                        help="timed forward passes of the paper model at 368x368 (0: skip)")
    parser.add_argument("--mixed_precision", action="store_true", help="mixed precision policy")
    parser.add_argument("--xla_pairs", type=int, default=0,
                        help="also time each preset this many times with and without XLA, "
                             "alternately, and report the median speed-ups (0: skip)")
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile steps with XLA, or not (default: the preset's choice, "
                             "on for cpu)")
    return parser.parse_args(argv)


def on_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def preset_config(preset, arguments):
    batch = {"paper": arguments.paper_batch, "cpu": arguments.cpu_batch}.get(preset, 0)
    if preset == "paper" and batch <= 0 and not on_gpu():
        batch = 2  # The preset's 10 would take minutes per step on two cores.
    overrides = dict(backbone_weights="none", mixed_precision=arguments.mixed_precision)
    if arguments.jit_compile is not None:
        overrides["jit_compile"] = arguments.jit_compile
    if batch > 0:
        overrides["batch_size"] = batch
    return config.make_config(preset, **overrides)


def time_training(cfg, warmup, steps):
    """Images per second of Keras fit on one cached random batch of cfg's shapes."""
    policy = trainer_module.set_precision_policy(cfg)
    trainer, _ = trainer_module.make_trainer(cfg, model.build_model(cfg))
    batch_data = dataset.synthetic_dataset(cfg, "train", True, batches=1)
    trainer.fit(batch_data, epochs=1, steps_per_epoch=max(1, warmup), verbose=0, shuffle=False)
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.fit(batch_data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return dict(preset=cfg.preset, policy=policy, jit_compile=cfg.jit_compile,
                batch_size=cfg.batch_size, input_size=cfg.input_size, steps=steps,
                parameters=trainer.network.count_params(),
                seconds_per_step=round(seconds / steps, 4),
                cpu_seconds_per_step=round(cpu_seconds / steps, 4),
                images_per_second=round(steps * cfg.batch_size / seconds, 3))


def compare_xla(preset, arguments):
    """Medians over `arguments.xla_pairs` alternating runs with and without XLA.

    A shared machine's speed can change by 2x from one minute to the next; alternating the two
    settings spreads that drift over both, and the process's CPU seconds per step are less
    affected by it than wall time is.
    """
    configs = {xla: dataclasses.replace(preset_config(preset, arguments), jit_compile=xla)
               for xla in (True, False)}
    runs = {True: [], False: []}
    for _ in range(arguments.xla_pairs):
        for xla, cfg in configs.items():
            runs[xla].append(time_training(cfg, arguments.warmup, arguments.steps))
    medians = {xla: {key: statistics.median(run[key] for run in runs[xla])
                     for key in ("seconds_per_step", "cpu_seconds_per_step")}
               for xla in runs}
    return dict(preset=preset, pairs=arguments.xla_pairs, steps=arguments.steps,
                with_xla=medians[True], without_xla=medians[False],
                wall_speedup=round(medians[False]["seconds_per_step"]
                                   / medians[True]["seconds_per_step"], 3),
                cpu_speedup=round(medians[False]["cpu_seconds_per_step"]
                                  / medians[True]["cpu_seconds_per_step"], 3))


def time_forward(cfg, runs, size=368):
    """Median seconds of one forward pass of cfg's network on a (1, size, size, 3) image."""
    import numpy as np
    import tensorflow as tf

    trainer_module.set_precision_policy(cfg)
    network = model.build_model(cfg)
    forward = tf.function(lambda images: network(images, training=False),
                          jit_compile=bool(cfg.jit_compile))
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)),
                         tf.float32)
    forward(images)[-1].numpy()
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        forward(images)[-1].numpy()
        timings.append(time.perf_counter() - started)
    return dict(preset=cfg.preset, size=size, runs=runs,
                median_ms=round(1000 * statistics.median(timings), 1),
                min_ms=round(1000 * min(timings), 1))


def main(arguments):
    import tensorflow as tf

    results = dict(device="GPU: " + tf.config.experimental.get_device_details(
        tf.config.list_physical_devices("GPU")[0]).get("device_name", "?") if on_gpu()
        else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        tensorflow=tf.__version__, data="random images and maps, one cached batch",
        load_average_before=[round(value, 2) for value in os.getloadavg()], training=[])
    for preset in [name for name in arguments.presets.split(",") if name]:
        figures = time_training(preset_config(preset, arguments), arguments.warmup,
                                arguments.steps)
        print(f"training {preset}: {figures['images_per_second']} images/s "
              f"({figures['seconds_per_step']} s/step, batch {figures['batch_size']}, "
              f"{figures['policy']}, xla={figures['jit_compile']})", flush=True)
        results["training"].append(figures)
        if arguments.xla_pairs > 0:
            comparison = compare_xla(preset, arguments)
            print(f"XLA {preset}: {comparison['wall_speedup']}x wall time, "
                  f"{comparison['cpu_speedup']}x CPU time per step (medians of "
                  f"{arguments.xla_pairs} alternating pairs)", flush=True)
            results.setdefault("xla_comparison", []).append(comparison)
    if arguments.latency_runs > 0:
        results["forward_latency"] = time_forward(preset_config("paper", arguments),
                                                  arguments.latency_runs)
        print(f"forward paper 368x368: {results['forward_latency']['median_ms']} ms median",
              flush=True)
    results["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main(parse_arguments())
