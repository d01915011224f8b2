"""Speed and correctness of data_generator.render_targets against a per-pixel loop.

The layouts are the real multi-person annotations of
../shared/data/aic_keypoint_annotations_sample.json (488 images, 1,342 people). The images themselves are not available, so each image's size is
estimated from its annotations: the largest x and y of its boxes and labelled keypoints, plus a
5% margin. Each layout is then scaled as the validation pipeline would letterbox it into a
368 x 368 input (factor 368 / longer side), and targets are rendered on the 46 x 46 grid of
stride 8 with the paper's sigma (7 px) and PAF width (1 cell).

The reference is the straightforward implementation the seed project used: for every person,
joint or limb, and every grid cell, compute the value in plain Python. It is slow, so it runs on
the first --reference_images images only; the fast function runs on all of them. The speed ratio
compares the mean time per image on the same images.

    python benchmarks/bench_targets.py [--reference_images 20] [--repeats 5]

The last line printed is JSON with both timings, the ratio and the largest absolute difference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import config  # noqa: E402
import data_generator  # noqa: E402

ANNOTATIONS = os.path.join(ROOT, "..", "shared", "data", "aic_keypoint_annotations_sample.json")
MARGIN = 1.05


def load_layouts(path, input_size):
    """[(keypoints (P, 14, 3) in input pixels, number of people)] for every annotated image."""
    with open(path, "r", encoding="utf-8") as handle:
        annotations = json.load(handle)
    layouts = []
    for item in annotations:
        names = sorted(item["keypoint_annotations"])
        keypoints = np.array([item["keypoint_annotations"][name] for name in names],
                             dtype=np.float64).reshape(-1, config.NUM_JOINTS, 3)
        boxes = np.array([item["human_annotations"][name] for name in names], dtype=np.float64)
        labelled = data_generator.labelled_joints(keypoints)
        extent_x = max(boxes[:, 2].max(), keypoints[..., 0][labelled].max(initial=0))
        extent_y = max(boxes[:, 3].max(), keypoints[..., 1][labelled].max(initial=0))
        factor = input_size / (max(extent_x, extent_y) * MARGIN)
        scaled = keypoints.copy()
        scaled[..., :2] *= factor
        layouts.append(scaled)
    return layouts


def reference_targets(keypoints, grid_shape, stride, sigma, paf_width):
    """The same maths as render_targets, one grid cell at a time in plain Python."""
    rows, cols = grid_shape
    heatmaps = np.zeros((rows, cols, config.NUM_HEATMAPS), dtype=np.float64)
    offset = (stride - 1) / 2.0
    for person in keypoints:
        for joint in range(config.NUM_JOINTS):
            x, y, v = person[joint]
            if v not in (1, 2):
                continue
            for r in range(rows):
                for c in range(cols):
                    dx, dy = c * stride + offset - x, r * stride + offset - y
                    value = math.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))
                    heatmaps[r, c, joint] = max(heatmaps[r, c, joint], value)
    for r in range(rows):
        for c in range(cols):
            heatmaps[r, c, -1] = 1.0 - max(heatmaps[r, c, :-1])
    return heatmaps.astype(np.float32), reference_pafs(keypoints, grid_shape, stride, paf_width)


def reference_pafs(keypoints, grid_shape, stride, paf_width):
    """Per-cell loop: unit vector on cells near each limb, averaged over people by count."""
    rows, cols = grid_shape
    sums = np.zeros((rows, cols, config.NUM_PAFS), dtype=np.float64)
    counts = np.zeros((rows, cols, config.NUM_LIMBS), dtype=np.float64)
    offset = (stride - 1) / 2.0
    eps = data_generator.BOUNDARY_EPSILON
    for person in keypoints:
        for k, (a, b) in enumerate(config.LIMBS):
            if person[a, 2] not in (1, 2) or person[b, 2] not in (1, 2):
                continue
            ax, ay = (person[a, 0] - offset) / stride, (person[a, 1] - offset) / stride
            bx, by = (person[b, 0] - offset) / stride, (person[b, 1] - offset) / stride
            length = math.hypot(bx - ax, by - ay)
            if length <= data_generator.MIN_LIMB_LENGTH:
                continue
            ux, uy = (bx - ax) / length, (by - ay) / length
            for r in range(rows):
                for c in range(cols):
                    along = (c - ax) * ux + (r - ay) * uy
                    across = abs((c - ax) * uy - (r - ay) * ux)
                    if -eps <= along <= length + eps and across <= paf_width + eps:
                        sums[r, c, 2 * k] += ux
                        sums[r, c, 2 * k + 1] += uy
                        counts[r, c, k] += 1
    for k in range(config.NUM_LIMBS):
        for r in range(rows):
            for c in range(cols):
                if counts[r, c, k] > 0:
                    sums[r, c, 2 * k] /= counts[r, c, k]
                    sums[r, c, 2 * k + 1] /= counts[r, c, k]
    return sums.astype(np.float32)


def time_per_image(function, layouts, repeats, *args):
    """Best-of-`repeats` mean seconds per image, and the last outputs."""
    best, outputs = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [function(keypoints, *args) for keypoints in layouts]
        best = min(best, (time.perf_counter() - start) / len(layouts))
    return best, outputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_images", type=int, default=20,
                        help="images the slow reference loop renders (default 20)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timing repeats of the fast function, best kept (default 5)")
    parser.add_argument("--annotations", default=ANNOTATIONS, help="AIC annotations JSON")
    config.add_config_arguments(parser)
    arguments = parser.parse_args(argv)
    cfg = config.config_from_args(arguments)
    layouts = load_layouts(arguments.annotations, cfg.input_size)
    grid = (cfg.input_size // cfg.stride, cfg.input_size // cfg.stride)
    target_args = (grid, cfg.stride, cfg.heatmap_sigma, cfg.paf_width)
    subset = layouts[:arguments.reference_images]
    fast_all, _ = time_per_image(data_generator.render_targets, layouts, arguments.repeats,
                                 *target_args)
    fast_subset, fast_outputs = time_per_image(data_generator.render_targets, subset,
                                               arguments.repeats, *target_args)
    reference_time, reference_outputs = time_per_image(reference_targets, subset, 1, *target_args)
    difference = max(float(np.abs(f - r).max())
                     for fast, ref in zip(fast_outputs, reference_outputs)
                     for f, r in zip(fast, ref))
    result = {
        "images": len(layouts), "people": int(sum(len(k) for k in layouts)),
        "reference_images": len(subset), "grid": list(grid), "stride": cfg.stride,
        "sigma": cfg.heatmap_sigma, "paf_width": cfg.paf_width,
        "fast_ms_per_image_all": round(fast_all * 1e3, 4),
        "fast_ms_per_image_subset": round(fast_subset * 1e3, 4),
        "reference_ms_per_image_subset": round(reference_time * 1e3, 2),
        "speed_ratio": round(reference_time / fast_subset, 1),
        "max_abs_difference": difference, "load_average": list(os.getloadavg()),
    }
    print(f"render_targets: {result['fast_ms_per_image_all']:.3f} ms/image over {len(layouts)} "
          f"images; reference loop {result['reference_ms_per_image_subset']:.1f} ms/image on "
          f"{len(subset)}; {result['speed_ratio']}x faster; max |difference| {difference:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
