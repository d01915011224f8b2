"""Frames per second of the network under Keras, ONNX Runtime and LiteRT, and LiteRT file sizes.

    python benchmarks/bench_runtimes.py                    # quick-start model and paper network
    python benchmarks/bench_runtimes.py --model models/quickstart/best.keras --threads 2

For each network (the quick-start checkpoint, and the `paper` preset's network with random
weights, which run as fast as trained ones), the checkpoint is exported with export.py's own
functions into a temporary folder (ONNX; LiteRT float32, float16 weights and int8 dynamic
range), and each runtime runs one 368x656 RGB frame (batch 1, the network alone: no resizing,
fusion or parsing) `--repeats` times after `--warmup` runs; frames per second is 1 / the median
time. Every runtime is given `--threads` CPU threads (default: every core); TensorFlow's
intra-op pool is set before it starts. The load average before and after is printed, as figures
measured on a busy machine are low. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import config  # noqa: E402
import runtimes  # noqa: E402

FRAME_SHAPE = (368, 656)  # rows, columns: a 16:9 frame at the paper's test height
QUICKSTART = os.path.join("models", "quickstart", "best.keras")


def timed_runs(runtime, frame, warmup, repeats):
    """Seconds of each of `repeats` runs of runtime.run(frame) after `warmup` runs."""
    for _ in range(warmup):
        runtime.run(frame)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.run(frame)
        seconds.append(time.perf_counter() - started)
    return seconds


def paper_checkpoint(folder):
    """The paper network with random weights, saved as train.py saves a checkpoint."""
    import model

    cfg = config.make_config("paper", backbone_weights="none")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "best.keras")
    model.build_model(cfg).save(path)
    config.save_config(cfg, os.path.join(folder, "config.json"))
    return path


def export_all(checkpoint, folder):
    """[(runtime name, artefact path or the checkpoint, quantization)] written into folder."""
    import export
    import model

    network, cfg = model.load_checkpoint(checkpoint)
    onnx_path = os.path.join(folder, "model.onnx")
    export.export(network, cfg, "onnx", [(onnx_path, "float32")])
    litert = [(os.path.join(folder, f"model_{quantization}.tflite"), quantization)
              for quantization in export.LITERT_QUANTIZATIONS]
    export.export(network, cfg, "litert", litert)
    return ([("keras", checkpoint, "float32"), ("onnxruntime", onnx_path, "float32")]
            + [("litert", path, quantization) for path, quantization in litert])


def bench_model(name, checkpoint, args):
    """Figures of one network: each runtime's frames per second and threads, LiteRT sizes."""
    rows = []
    frame = np.random.default_rng(0).uniform(0, 255, (1,) + FRAME_SHAPE + (3,))
    frame = frame.astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as folder:
        print(f"{name}: exporting {checkpoint} ...", flush=True)
        for runtime_name, path, quantization in export_all(checkpoint, folder):
            runtime, _ = runtimes.load(path, args.threads)
            seconds = timed_runs(runtime, frame, args.warmup, args.repeats)
            row = {"runtime": runtime_name, "quantization": quantization,
                   "threads": runtime.threads or "TensorFlow default (every core)",
                   "fps": round(1.0 / statistics.median(seconds), 3),
                   "median_ms": round(1000 * statistics.median(seconds), 1),
                   "min_ms": round(1000 * min(seconds), 1),
                   "bytes": os.path.getsize(path)}
            rows.append(row)
            print(f"  {runtime_name:12s} {quantization:8s} {row['fps']:8.2f} frames/s "
                  f"(median {row['median_ms']} ms, threads {row['threads']}, "
                  f"{row['bytes'] / 1e6:.2f} MB)", flush=True)
    return {"model": name, "checkpoint": checkpoint, "runtimes": rows}


def set_tensorflow_threads(threads):
    """Fix TensorFlow's intra-op threads before it starts (0: its default, every core)."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=QUICKSTART,
                        help=f"quick-start checkpoint (default {QUICKSTART}); 'none' skips it")
    parser.add_argument("--no_paper", "--no-paper", action="store_true",
                        help="skip the paper network")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of every runtime (default: every core)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    set_tensorflow_threads(args.threads)
    load_before = [round(value, 2) for value in os.getloadavg()]
    results = []
    if args.model != "none":
        results.append(bench_model("quickstart", args.model, args))
    if not args.no_paper:
        with tempfile.TemporaryDirectory(prefix="bench-paper-") as folder:
            results.append(bench_model("paper (random weights)",
                                       paper_checkpoint(folder), args))
    print(json.dumps({"frame": list(FRAME_SHAPE), "batch": 1, "threads": args.threads,
                      "cpu_count": os.cpu_count(), "load_average_before": load_before,
                      "load_average_after": [round(value, 2) for value in os.getloadavg()],
                      "models": results}))


if __name__ == "__main__":
    main()
