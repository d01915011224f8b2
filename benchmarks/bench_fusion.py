"""How accurately and how fast each way of fusing the scales locates joints, on perfect maps.

    python benchmarks/bench_fusion.py [--preset paper|cpu] [--limit N] [--no-oracle]
                                      [--no-image-resolution] [config options]

Multi-scale inference runs the network at every scale of cfg.scales and averages the maps. The
original upsamples each scale's maps to the image's resolution and averages there; before
issue 11 this project averaged them on the 1x network grid. Here every scale's maps are
rendered perfectly (data_generator.render_targets at that scale's input, with cv2.resize's
pixel-centre convention, as a perfect network would output them) for the images of
../shared/data/aic_keypoint_annotations_sample.json, then fused by each method:

- "1x grid, bilinear": the fusion before issue 11 (bilinear resampling onto the 1x grid);
- "largest grid x1" and "x2": the largest scale's output grid, and that grid made twice
  finer, cubic resampling (cfg.fusion_upsample 1 and 2; 2 is the default);
- "image resolution": the image's own pixels, cubic (cfg.fusion_upsample 0, as the original);
- "original peaks": image resolution, then the original's peak finding (Gaussian smoothing of
  3 px, integer peak positions) instead of this project's sub-cell refinement.

1. Localisation: each annotation's canvas (evaluate.oracle_canvas) is scaled to 1000 pixels
   high; for every labelled joint the nearest peak of its channel is found (inference
   .find_peaks with the grid's smoothing, see inference.grid_mapping); the mean distance in
   image pixels is reported, with the time of fusion + peak finding per image (median).
2. Oracle mAP (unless --no-oracle): the same maps at the canvas's own size, fused, parsed
   (parsing.parse_poses) and scored with the official metric (aic_metric), with the median
   time of fusion + parsing per image.

Timings use one thread for OpenMP/BLAS/OpenCV. The last line is JSON.
"""

from __future__ import annotations

import common

if __name__ == "__main__":  # one thread for the timings; not when imported by another script
    common.one_thread()

import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import aic_metric  # noqa: E402
import config  # noqa: E402
import evaluate  # noqa: E402
import inference  # noqa: E402
import parsing  # noqa: E402
from data_generator import render_targets  # noqa: E402
LOCALISATION_HEIGHT = 1000
# The original's peak finding: Gaussian smoothing of this many image pixels, integer peaks.
ORIGINAL_SMOOTHING_PIXELS = 3.0


def rendered_scales(keypoints, height, width, cfg):
    """[inference.ScaleMaps] per scale: perfect maps of the people (P, 14, 3) in an image of
    height x width pixels, on the cells of each scale's grid that cover the image."""
    per_scale = []
    for scale in cfg.scales:
        rows, cols = inference.input_size(height, width, cfg, scale)
        factors = (cols / width, rows / height)
        moved = keypoints.copy()
        moved[:, :, :2] = (moved[:, :, :2] + 0.5) * np.asarray(factors) - 0.5
        grid = (-(-rows // cfg.stride), -(-cols // cfg.stride))
        heatmaps, pafs = render_targets(moved, grid, cfg.stride, cfg.heatmap_sigma,
                                        cfg.paf_width)
        per_scale.append(inference.ScaleMaps(heatmaps, pafs, factors))
    return per_scale


def one_x_grid(height, width, cfg):
    """The 1x network grid as a FusionGrid (where the scales were fused before issue 11)."""
    rows, cols = inference.input_size(height, width, cfg)
    return inference.FusionGrid((-(-rows // cfg.stride), -(-cols // cfg.stride)),
                                float(cfg.stride), (cols / width, rows / height))


def fuse(method, per_scale, height, width, cfg):
    """(heatmaps, pafs, mapping) of one image fused by `method` (see the module docstring)."""
    if method == "1x grid, bilinear":
        grid = one_x_grid(height, width, cfg)
        heatmaps, pafs = inference.fuse_scales(per_scale, grid, cfg, cv2.INTER_LINEAR)
        return heatmaps, pafs, inference.grid_mapping(grid, height, cfg)
    upsample = {"largest grid x1": 1, "largest grid x2": 2}.get(method, 0)
    fused_cfg = dataclasses.replace(cfg, fusion_upsample=upsample)
    heatmaps, pafs, mapping = inference.fused_maps(per_scale, (height, width), fused_cfg)
    if method == "original peaks":
        mapping = dict(mapping, smoothing=ORIGINAL_SMOOTHING_PIXELS)
    return heatmaps, pafs, mapping


def peaks_in_pixels(heatmaps, mapping, cfg, method):
    """(joint (M,), xy (M, 2) in image pixels) of the peaks of fused maps."""
    if method == "original peaks":
        maps = np.ascontiguousarray(heatmaps[:, :, :config.NUM_JOINTS])
        smooth = cv2.GaussianBlur(maps, (0, 0), ORIGINAL_SMOOTHING_PIXELS).reshape(maps.shape)
        row, col, joint = parsing._local_maxima(smooth, cfg.peak_threshold)
        return joint, np.stack([col, row], axis=1).astype(np.float64)
    peaks = parsing.find_peaks(heatmaps, cfg, mapping["smoothing"])
    return peaks.joint, parsing.grid_to_pixels(peaks.xy, mapping["stride"], mapping["scale"],
                                                 mapping["offset"])


def localisation_errors(joint, xy, keypoints):
    """Distance from every labelled joint to the nearest peak of its channel (NaN: none)."""
    errors = []
    for person in keypoints:
        for index in np.nonzero(np.isin(person[:, 2], (1, 2)))[0]:
            candidates = xy[joint == index]
            errors.append(np.hypot(*(candidates - person[index, :2]).T).min()
                          if len(candidates) else np.nan)
    return errors


def record_canvas(record):
    """(keypoints (P, 14, 3), height, width) of a reference record on its canvas."""
    keypoints, boxes = evaluate.reference_keypoints(record)
    width, height = evaluate.oracle_canvas(record, keypoints, boxes)
    return keypoints, int(round(height)), int(round(width))


def localisation(references, cfg, methods):
    """{method: {"mean_error_px", "missing", "joints", "median_ms"}} on 1000-pixel images."""
    errors = {method: [] for method in methods}
    seconds = {method: [] for method in methods}
    for record in references:
        keypoints, height, width = record_canvas(record)
        factor = LOCALISATION_HEIGHT / height
        keypoints[:, :, :2] *= factor
        height, width = LOCALISATION_HEIGHT, max(int(round(width * factor)), 1)
        per_scale = rendered_scales(keypoints, height, width, cfg)
        for method in methods:
            started = time.perf_counter()
            heatmaps, _, mapping = fuse(method, per_scale, height, width, cfg)
            joint, xy = peaks_in_pixels(heatmaps, mapping, cfg, method)
            seconds[method].append(time.perf_counter() - started)
            errors[method] += localisation_errors(joint, xy, keypoints)
    return {method: {"mean_error_px": round(float(np.nanmean(errors[method])), 4),
                     "missing": int(np.isnan(errors[method]).sum()),
                     "joints": len(errors[method]),
                     "median_ms": round(1000 * float(np.median(seconds[method])), 3)}
            for method in methods}


def oracle(references, cfg, methods):
    """{method: {"oracle_map", "ap50", "ap75", "median_parse_ms"}} at the canvases' sizes."""
    predictions = {method: [] for method in methods}
    seconds = {method: [] for method in methods}
    for record in references:
        keypoints, height, width = record_canvas(record)
        per_scale = rendered_scales(keypoints, height, width, cfg)
        for method in methods:
            started = time.perf_counter()
            heatmaps, pafs, mapping = fuse(method, per_scale, height, width, cfg)
            people, _ = parsing.parse_poses(heatmaps, pafs, cfg, **mapping)
            seconds[method].append(time.perf_counter() - started)
            people = inference.clip_to_image(people, height, width)
            predictions[method].append({"image_id": record["image_id"], "keypoint_annotations":
                                        parsing.people_to_aic(people, cfg.integer_output)})
    results = {}
    for method in methods:
        scores = aic_metric.aic_map(predictions[method], references)
        results[method] = {"oracle_map": round(scores["score"], 6),
                           "ap50": round(scores["ap50"], 4), "ap75": round(scores["ap75"], 4),
                           "median_parse_ms": round(1000 * float(np.median(seconds[method])),
                                                    3)}
    return results


def main(argv=None):
    parser = common.annotation_parser(__doc__)
    parser.add_argument("--no-oracle", "--no_oracle", action="store_true",
                        help="only the localisation part")
    parser.add_argument("--no-image-resolution", "--no_image_resolution", action="store_true",
                        help="skip the two (slow) image-resolution methods")
    args, cfg, references = common.parse_with_config(parser, argv)
    methods = ["1x grid, bilinear", "largest grid x1", "largest grid x2"]
    if not args.no_image_resolution:
        methods += ["image resolution", "original peaks"]
    located = localisation(references, cfg, methods)
    scored = {} if args.no_oracle else oracle(references, cfg, methods[:4])
    print(f"{cfg.preset} preset, scales {tuple(cfg.scales)}, stride {cfg.stride}, inference "
          f"height {cfg.inference_height}; {len(references)} images")
    print(f"{'method':22s}{'error px':>10s}{'ms':>9s}{'oracle mAP':>12s}{'parse ms':>10s}")
    for method in methods:
        row = scored.get(method, {})
        print(f"{method:22s}{located[method]['mean_error_px']:10.3f}"
              f"{located[method]['median_ms']:9.2f}{row.get('oracle_map', float('nan')):12.5f}"
              f"{row.get('median_parse_ms', float('nan')):10.2f}")
    print(json.dumps({"preset": cfg.preset, "scales": list(cfg.scales), "images": len(references),
                      "localisation_height_px": LOCALISATION_HEIGHT,
                      "localisation": located, "oracle": scored}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
