"""Static int8 on the CPU: ONNX Runtime (QDQ, quantize_static) beside OpenVINO (NNCF), and float32.

    python benchmarks/bench_quantization.py --model models/quickstart/best.keras --threads 2
    python benchmarks/bench_quantization.py --model M.keras --calibration_images DIR --no_paper

For each network (the `cpu` checkpoint given by --model, and the `paper` preset's network with
random weights unless --no_paper) the benchmark writes, into a temporary folder, export.py's
ONNX and OpenVINO float32 models, OpenVINO int8 (export.py's NNCF path) and ONNX Runtime int8:
onnxruntime.quantization.quantize_static, QDQ format, uint8 activations and per-channel int8
weights, MinMax ranges. Both int8 models are calibrated on the same inputs: export.py's
calibration_inputs of the same images (--calibration_images DIR, else the cpu checkpoint's
training records), prepared at each network's inference height as inference.py prepares them.

Latency: one random 368x368 RGB input (batch 1, the network alone), --repeats timed runs after
--warmup, median milliseconds, every runtime on --threads threads. runtimes.py runs OpenVINO
on a static-shape compilation from a shape's second call; its dynamic-shape model, which runs
a shape met once, is timed too (float32 and int8), to show what the static one saves. Accuracy:
the largest and mean absolute map difference from the Keras model over --accuracy_inputs
calibration-like inputs of other images (--images, default the repository's samples). The load
average before and after is printed, as figures measured on a busy machine are low. The last
line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import config  # noqa: E402
import export  # noqa: E402
import runtimes  # noqa: E402

INPUT_SHAPE = (1, 368, 368, 3)
QUICKSTART = os.path.join("models", "quickstart", "best.keras")


class CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader over export.calibration_inputs."""

    def __init__(self, inputs):
        self.items = iter(inputs)

    def get_next(self):
        item = next(self.items, None)
        return None if item is None else {runtimes.INPUT_NAME: item.astype(np.float32)}


def intermediate_chunk(count):
    """ONNX Runtime's CalibMaxIntermediateOutputs for `count` inputs: ranges are folded in
    every chunk of inputs, so the paper network's activations of every input are not all held
    at once; a chunk that divides `count` leaves the last fold empty, which ONNX Runtime 1.32
    rejects ("No data is collected"), so one that leaves a remainder is chosen."""
    return next((size for size in range(8, 1, -1) if count % size), count)


def write_onnx_int8(onnx_path, path, calibration):
    """ONNX Runtime static int8 (QDQ) of an ONNX file, its sidecar copied as int8's."""
    from onnxruntime.quantization import (QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    prepared = path + ".pre.onnx"
    # In the output's (temporary) folder: when its symbolic shape inference fails, ONNX Runtime
    # dumps the half-inferred model and its weights into the working directory.
    with contextlib.chdir(os.path.dirname(os.path.abspath(path))):
        try:  # shape inference and graph clean-up first
            quant_pre_process(onnx_path, prepared)
        except Exception as error:  # noqa: BLE001 - ONNX Runtime raises a bare Exception here
            # The light network's dilated convolutions defeat its symbolic shape inference
            # ("Incomplete symbolic shape inference"); ONNX's own shape inference still runs.
            print(f"  note: {error}; pre-processing without symbolic shapes", flush=True)
            quant_pre_process(onnx_path, prepared, skip_symbolic_shape=True)
    quantize_static(prepared, path, CalibrationReader(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"CalibMaxIntermediateOutputs":
                                   intermediate_chunk(len(calibration))})
    os.remove(prepared)
    with open(onnx_path + ".json", encoding="utf-8") as handle:
        values = json.load(handle)
    with open(path + ".json", "w", encoding="utf-8") as handle:
        json.dump(dict(values, quantization="int8"), handle)


def export_models(network, cfg, folder, calibration):
    """{(runtime, quantization): (path, seconds to write)} of the four models."""
    paths = {("onnxruntime", "float32"): os.path.join(folder, "model.onnx"),
             ("onnxruntime", "int8"): os.path.join(folder, "model_int8.onnx"),
             ("openvino", "float32"): os.path.join(folder, "model.xml"),
             ("openvino", "int8"): os.path.join(folder, "model_int8.xml")}
    seconds = {}
    started = time.perf_counter()
    export.export(network, cfg, "onnx", [(paths["onnxruntime", "float32"], "float32")])
    seconds["onnxruntime", "float32"] = time.perf_counter() - started
    started = time.perf_counter()
    write_onnx_int8(paths["onnxruntime", "float32"], paths["onnxruntime", "int8"], calibration)
    seconds["onnxruntime", "int8"] = time.perf_counter() - started
    started = time.perf_counter()
    export.export(network, cfg, "openvino", [(paths["openvino", "float32"], "float32"),
                                             (paths["openvino", "int8"], "int8")],
                  calibration=calibration)
    seconds["openvino", "int8"] = time.perf_counter() - started  # float32 and int8 together
    return {key: (path, seconds.get(key)) for key, path in paths.items()}


def timed(run, batch, warmup, repeats):
    """Median and smallest milliseconds of `repeats` calls run(batch) after `warmup` calls."""
    for _ in range(warmup):
        run(batch)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        seconds.append(time.perf_counter() - started)
    return round(1000 * statistics.median(seconds), 1), round(1000 * min(seconds), 1)


def dynamic_openvino(path, threads):
    """OpenVINO compiled with a dynamic input only, as OpenVINORuntime runs a shape it meets
    for the first time: fn(batch) -> outputs."""
    runtime, _ = runtimes.load(path, threads)
    request, _ = runtime.dynamic
    return lambda batch: request.infer({0: batch})


def differences(runtime, reference, inputs):
    """(largest, mean) |map difference| of a runtime from the Keras model over inputs."""
    largest, total, count = 0.0, 0.0, 0
    for item in inputs:
        batch = item.astype(np.float32)
        for got, want in zip(runtime.run(batch), reference.run(batch)):
            difference = np.abs(got - want)
            largest = max(largest, float(difference.max()))
            total, count = total + float(difference.sum()), count + difference.size
    return largest, total / max(count, 1)


def bench_network(name, checkpoint, cfg_paths, args):
    """Rows of one network: per runtime and quantization, latency, size and differences."""
    import model

    network, cfg = model.load_checkpoint(checkpoint)
    cfg = dataclasses.replace(cfg, **cfg_paths)
    calibration = export.calibration_inputs(cfg, args.calibration_images,
                                            args.calibration_limit)
    accuracy_inputs = [export.calibration_input(image, cfg) for _, image in
                       export.sample_images(args.images, args.accuracy_inputs)]
    reference = runtimes.KerasRuntime(network)
    batch = np.random.default_rng(0).uniform(0, 255, INPUT_SHAPE).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quantization-") as folder:
        print(f"{name}: exporting and calibrating on {len(calibration)} inputs ...", flush=True)
        for (runtime_name, quantization), (path, seconds) in export_models(
                network, cfg, folder, calibration).items():
            runtime, _ = runtimes.load(path, args.threads)
            median, smallest = timed(runtime.run, batch, args.warmup, args.repeats)
            largest, mean = differences(runtime, reference, accuracy_inputs)
            rows.append({"runtime": runtime_name, "quantization": quantization,
                         "median_ms": median, "min_ms": smallest,
                         "bytes": export.artefact_size(path), "max_abs": largest,
                         "mean_abs": mean, "write_seconds": seconds and round(seconds, 1),
                         "precision": getattr(runtime, "precision", None)})
            print("  " + json.dumps(rows[-1]), flush=True)
        for quantization in ("float32", "int8"):
            path = os.path.join(folder, "model.xml" if quantization == "float32"
                                else "model_int8.xml")
            median, smallest = timed(dynamic_openvino(path, args.threads), batch,
                                     args.warmup, args.repeats)
            rows.append({"runtime": "openvino (dynamic shape)", "quantization": quantization,
                         "median_ms": median, "min_ms": smallest})
            print("  " + json.dumps(rows[-1]), flush=True)
    return {"model": name, "checkpoint": checkpoint, "calibration_inputs": len(calibration),
            "calibration_shape": list(calibration[0].shape), "rows": rows,
            "speedups": speedups(rows)}


def speedups(rows):
    """ONNX Runtime int8's latency against ONNX Runtime float32 and OpenVINO int8, and
    OpenVINO int8's against OpenVINO float32 (ratios above 1: faster)."""
    ms = {(row["runtime"], row["quantization"]): row["median_ms"] for row in rows}
    return {"onnxruntime_int8_vs_float32": round(ms["onnxruntime", "float32"]
                                                 / ms["onnxruntime", "int8"], 3),
            "onnxruntime_int8_vs_openvino_int8": round(ms["openvino", "int8"]
                                                       / ms["onnxruntime", "int8"], 3),
            "openvino_int8_vs_float32": round(ms["openvino", "float32"]
                                              / ms["openvino", "int8"], 3)}


def paper_checkpoint(folder):
    """The paper network with random weights, saved as train.py saves a checkpoint."""
    import model

    cfg = config.make_config("paper", backbone_weights="none")
    path = os.path.join(folder, "best.keras")
    os.makedirs(folder, exist_ok=True)
    model.build_model(cfg).save(path)
    config.save_config(cfg, os.path.join(folder, "config.json"))
    return path


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=QUICKSTART,
                        help=f"the cpu checkpoint (default {QUICKSTART})")
    parser.add_argument("--no_paper", "--no-paper", action="store_true",
                        help="skip the paper network")
    parser.add_argument("--calibration_images", metavar="DIR",
                        help="calibration images (default: --model's training records)")
    parser.add_argument("--calibration_limit", type=int, default=64, metavar="N")
    parser.add_argument("--images", default=export.DEFAULT_SAMPLES, metavar="DIR",
                        help="images of the accuracy inputs (default: images/samples)")
    parser.add_argument("--accuracy_inputs", type=int, default=8, metavar="N")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_arguments(argv)
    runtimes.set_tensorflow_threads(args.threads)
    load_before = [round(value, 2) for value in os.getloadavg()]
    cpu_cfg = config.load_config(os.path.join(os.path.dirname(os.path.abspath(args.model)),
                                              "config.json"))
    # The paper network calibrates on the same images: the cpu run's data paths.
    cfg_paths = {"data_dir": cpu_cfg.data_dir, "records_dir": cpu_cfg.records_dir}
    results = [bench_network(cpu_cfg.preset, args.model, cfg_paths, args)]
    if not args.no_paper:
        folder = tempfile.mkdtemp(prefix="bench-paper-")
        try:
            results.append(bench_network("paper (random weights)", paper_checkpoint(folder),
                                         cfg_paths, args))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    import openvino

    print(json.dumps({"input": list(INPUT_SHAPE), "threads": args.threads,
                      "cpu_count": os.cpu_count(),
                      "openvino_cpu_capabilities": openvino.Core().get_property(
                          "CPU", "OPTIMIZATION_CAPABILITIES"),
                      "load_average_before": load_before,
                      "load_average_after": [round(value, 2) for value in os.getloadavg()],
                      "networks": results}))


if __name__ == "__main__":
    main()
