"""Speed of `evaluate.py --model`: one image at a time against the batched stream, same run.

    python benchmarks/bench_model_eval.py --images DIR [DIR ...] [--model CKPT] [--limit 200]
                                          [--rounds 1] [--as-before] [--ref ANNOTATIONS.json]
                                          [config options]

Both paths run evaluate.model_predictions on the same images with the same network and config:
"one at a time" reads, runs (every scale, mirror image in the same batch) and parses one image
before the next (chunk_size 1, no worker thread); "batched" is the default stream
(cfg.inference_chunk images per round, inputs of one padded shape batched together, parsing
on a worker thread while the network runs). Each path reads its images from disk itself.
With --as-before a third path emulates evaluate.py before issue 11: one image at a time, the
model called eagerly (layer by layer from Python), inputs padded to the stride only (so its
predictions differ slightly); fusion and parsing are today's.

Without --model the network is the `cpu` preset's (`python train.py --preset cpu`),
randomly initialised with seed 0: speed does not depend on the weights, and with the default
inference settings of the preset (1x, 1.5x, 2x with flip) the work per image is the quick
start's. Make images with `python pre-process.py --synthetic 200 --seed 0 --data_dir
/tmp/qs11`, then pass both of its image folders (200 images), or the 200 validation images of
`--synthetic 2000` (the quick start's). The tf.function is traced once on the first image
before timing. With --rounds N > 1 the paths alternate (A B B A ...) so that a change in the
machine's load affects both alike; times are summed over rounds.

The last line is JSON: images, wall seconds and images/s of each path and their ratio
("speedup"), CPU seconds per image of the whole process (all threads) and their ratio
("cpu_ratio": less work per image, whatever else runs on the machine; the overlap of parsing
with the network shows only in the wall time), whether the two paths wrote identical
predictions, the scores when --ref is given, and what bounds the speed: the multiply-adds of
the network per image ("network_gmac_per_image"), the rate at which the batched path does them
("batched_gmac_per_second") and, for comparison, the rate of a large float32 matrix product
("matmul_gmac_per_second", close to what the cores can do).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import aic_metric  # noqa: E402
import config  # noqa: E402
import evaluate  # noqa: E402
import inference  # noqa: E402

# How each path runs evaluate.model_predictions; "as_before" (with --as-before) also calls the
# model eagerly and pads inputs to the stride only, as evaluate.py did before issue 11.
PATHS = {"as_before": {"chunk_size": 1, "workers": 0},
         "one_at_a_time": {"chunk_size": 1, "workers": 0},
         "batched": {"chunk_size": None, "workers": 1}}


def run_path(name, network, cfg, items):
    """(wall seconds, CPU seconds of the whole process, predictions) of one path."""
    compiled = inference.network_function
    if name == "as_before":
        cfg = dataclasses.replace(cfg, input_bucket=cfg.stride)
        inference.network_function = lambda model: (  # noqa: E731
            lambda batch: model(batch, training=False))
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        predictions = evaluate.model_predictions(network, cfg, items, [], progress=False,
                                                 **PATHS[name])
        return (time.perf_counter() - started, time.process_time() - cpu_started,
                predictions)
    finally:
        inference.network_function = compiled


def load_network(args):
    """(network, config): the checkpoint with the command line's overrides, or a random cpu
    preset network."""
    import model

    overrides = config.overrides_from_args(args)
    if args.model:
        network, checkpoint_cfg = model.load_checkpoint(args.model)
        return network, dataclasses.replace(checkpoint_cfg, **overrides)
    cfg = config.make_config("cpu", **overrides)
    return model.build_model(cfg), cfg


def multiply_adds_per_pixel(network, cfg):
    """Multiply-adds of the network's convolutions per input pixel (a float).

    Inputs are padded to multiples of the stride, where every layer's output is exactly the
    input shape divided by its own stride, so the count per pixel is the same for every input
    shape; it is read once off the output shapes of one (1, 8 * stride, 8 * stride, 3) input.
    """
    import keras
    import numpy as np

    convolutions = [layer for layer in network.layers
                    if isinstance(layer, keras.layers.Conv2D)]
    probe = keras.Model(network.inputs, [layer.output for layer in convolutions])
    side = 8 * int(cfg.stride)
    outputs = probe([np.zeros((1, side, side, 3), np.float32)])
    total = sum(int(np.prod(output.shape[1:3])) * int(np.prod(layer.kernel.shape))
                for layer, output in zip(convolutions, outputs))
    return total / (side * side)


def network_gmac_per_image(network, cfg, items):
    """Mean multiply-adds (10^9) the network does per image at cfg.scales (and flip)."""
    import cv2

    per_pixel = multiply_adds_per_pixel(network, cfg)
    passes = 2 if cfg.flip_test else 1
    total = 0.0
    for _, path in items:
        height, width = cv2.imread(path).shape[:2]
        for scale in cfg.scales:
            size = inference.input_size(height, width, cfg, scale)
            rows, cols = inference.padded_size(size, cfg)
            total += per_pixel * rows * cols * passes
    return total / max(len(items), 1) / 1e9


def matmul_gmac_per_second(size=2048, repeats=10):
    """Multiply-adds (10^9) per second of a float32 size x size matrix product in TensorFlow:
    about what this machine's cores can do at best, for comparison with the network."""
    import tensorflow as tf

    matrix = tf.random.uniform((size, size), dtype=tf.float32)
    tf.matmul(matrix, matrix).numpy()
    started = time.perf_counter()
    for _ in range(repeats):
        tf.matmul(matrix, matrix).numpy()
    return size ** 3 * repeats / (time.perf_counter() - started) / 1e9


def image_items(folders, limit):
    """[(image_id, path)] of every image in the folders, sorted by file name within each."""
    items = []
    for folder in folders:
        items += evaluate.image_list(folder)
    return items[:limit]


def timed_rounds(network, cfg, items, rounds, names):
    """{path: [wall seconds, CPU seconds (both summed over rounds), last predictions]}."""
    order = []
    for index in range(rounds):
        order += list(names) if index % 2 == 0 else list(names)[::-1]
    results = {name: [0.0, 0.0, None] for name in names}
    for name in order:
        seconds, cpu_seconds, results[name][2] = run_path(name, network, cfg, items)
        results[name][0] += seconds
        results[name][1] += cpu_seconds
        print(f"{name}: {len(items)} images in {seconds:.1f} s ({cpu_seconds:.1f} CPU s)",
              flush=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR",
                        help="image folders (all their images, up to --limit)")
    parser.add_argument("--model", metavar="CKPT", help="checkpoint (default: random cpu net)")
    parser.add_argument("--limit", type=int, default=200, help="images (default 200)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per path")
    parser.add_argument("--ref", metavar="ANNOTATIONS.json", help="also score both paths")
    parser.add_argument("--as-before", "--as_before", action="store_true",
                        help="also time the path as before issue 11 (eager model calls, "
                             "inputs padded to the stride only, one image at a time)")
    config.add_config_arguments(parser)
    args = parser.parse_args(argv)
    network, cfg = load_network(args)
    items = image_items(args.images, args.limit)
    evaluate.model_predictions(network, cfg, items[:1], [], progress=False)  # trace once
    names = [name for name in PATHS if args.as_before or name != "as_before"]
    results = timed_rounds(network, cfg, items, max(args.rounds, 1), names)
    count = len(items) * max(args.rounds, 1)
    rates = {name: round(count / wall, 3) for name, (wall, _, _) in results.items()}
    cpu_per_image = {name: round(cpu / count, 4) for name, (_, cpu, _) in results.items()}
    summary = {"images": len(items), "rounds": max(args.rounds, 1), "preset": cfg.preset,
               "scales": list(cfg.scales), "flip_test": cfg.flip_test,
               "model": args.model or "random cpu preset",
               "seconds": {name: round(wall, 2) for name, (wall, _, _) in results.items()},
               "images_per_second": rates, "cpu_seconds_per_image": cpu_per_image,
               "speedup": round(rates["batched"] / rates["one_at_a_time"], 3),
               "cpu_ratio": round(cpu_per_image["one_at_a_time"] / cpu_per_image["batched"], 3),
               "speedup_over_as_before": round(rates["batched"] / rates["as_before"], 3)
               if "as_before" in rates else None,
               "cpu_ratio_over_as_before": round(cpu_per_image["as_before"]
                                                 / cpu_per_image["batched"], 3)
               if "as_before" in rates else None,
               "identical_predictions": results["batched"][2] == results["one_at_a_time"][2]}
    # The network's arithmetic bounds the batched path: report how fast it is done.
    gmac = network_gmac_per_image(network, cfg, items)
    summary["network_gmac_per_image"] = round(gmac, 2)
    summary["batched_gmac_per_second"] = round(gmac * rates["batched"], 1)
    summary["matmul_gmac_per_second"] = round(matmul_gmac_per_second(), 1)
    if args.ref:
        references = aic_metric.load_json_list(args.ref, "reference")
        summary["scores"] = {name: round(aic_metric.aic_map(predictions, references)["score"], 6)
                             for name, (_, _, predictions) in results.items()}
    print(", ".join(f"{name} {rate:.2f} images/s" for name, rate in rates.items())
          + f": batched / one at a time {summary['speedup']:.2f}x; identical predictions: "
          f"{summary['identical_predictions']}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
