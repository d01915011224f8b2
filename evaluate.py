"""Score AI Challenger keypoint predictions with the challenge's official mAP, and make them.

    python evaluate.py --submit PRED.json --ref ANNOTATIONS.json [--json] [--json_out S.json]
    python evaluate.py --model models/cpu/best.keras --images DIR [--ref ANNOTATIONS.json]
                       [--out PRED.json] [--limit N] [config options]
    python evaluate.py --oracle --ref ANNOTATIONS.json [--out PRED.json] [--limit N] [--preset cpu]

The metric itself lives in aic_metric.py (NumPy only; its docstring lists the official
evaluator's rules it follows, integer division and duplicate entries included): the score
printed on the last line (``Score: %.8f``) is the number the challenge's published evaluator
prints, to the last digit. This script adds the command line, the model mode (a checkpoint run
over a folder of images, batched: see inference.estimate_poses_stream) and the oracle mode
(ground-truth maps rendered and parsed back: the ceiling the parser leaves to a perfect
network). Unreadable files, malformed references and output files that cannot be written
(checked before the work) exit with status 2 and a one-line error on stderr.

Diagnostics printed as a table before the score (and returned by ``aic_map``): AP at OKS 0.5
and 0.75, missed and spurious people, and a per-keypoint accuracy (see aic_metric).

With ``--json`` the only thing on stdout is one line of JSON (warnings included in it), so the
whole output parses; without it, warnings, the table and finally ``Score: %.8f`` are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

import config
import utils
from aic_metric import (  # noqa: F401  (re-exported: evaluate.aic_map etc. keep working)
    InputError, aic_map, best_matches, keypoint_terms, load_json_list, official_mean,
    parse_predictions, parse_references,
)
from config import JOINT_NAMES, NUM_JOINTS

EXIT_INPUT_ERROR = 2
# The oracle's canvas, when the image size is unknown, is the annotations' extent plus this
# fraction (and a few pixels), so that people touching the extent are not cut by the border.
ORACLE_MARGIN_FRACTION = 0.05
ORACLE_MARGIN_PIXELS = 8


# --------------------------------------------------------------------------------------------
# Oracle mode: ground-truth maps rendered and parsed back.
# --------------------------------------------------------------------------------------------
def reference_keypoints(record):
    """(P, 14, 3) float64 keypoints and (P, 4) boxes of a reference record."""
    names = list(record["keypoint_annotations"])
    keypoints = np.array([record["keypoint_annotations"][name] for name in names],
                         dtype=np.float64).reshape(len(names), NUM_JOINTS, 3)
    boxes = np.array([record["human_annotations"][name] for name in names],
                     dtype=np.float64).reshape(len(names), 4)
    return keypoints, boxes


def oracle_canvas(record, keypoints, boxes):
    """(width, height) in original pixels of the image the annotations live in.

    The record's own "width"/"height" when present (pre-process records carry them); otherwise
    the extent of the labelled keypoints and boxes plus a margin.
    """
    width, height = record.get("width"), record.get("height")
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) \
            and width > 0 and height > 0:
        return float(width), float(height)
    labelled = keypoints[(keypoints[:, :, 2] == 1) | (keypoints[:, :, 2] == 2)][:, :2]
    corners = np.concatenate([labelled, boxes[:, 2:4], np.ones((1, 2))], axis=0)
    extent = corners.max(axis=0)
    canvas = extent * (1.0 + ORACLE_MARGIN_FRACTION) + ORACLE_MARGIN_PIXELS
    return float(canvas[0]), float(canvas[1])


def oracle_grid(canvas, cfg):
    """(factor, (rows, cols)): resize factor making the canvas cfg.inference_height high, and
    the grid of the resized canvas padded up to a multiple of cfg.stride."""
    width, height = canvas
    factor = cfg.inference_height / height
    rows = math.ceil(cfg.inference_height / cfg.stride)
    cols = math.ceil(width * factor / cfg.stride)
    return factor, (rows, max(cols, 1))


def oracle_maps(record, cfg):
    """(heatmaps, pafs, factor): a reference record's ground-truth maps, as a perfect network
    would output them for its image resized by `factor` to cfg.inference_height rows.

    The maps are data_generator.render_targets of the keypoints scaled by the factor
    (x_input = x * factor) on the grid of oracle_grid; heatmaps (rows, cols, NUM_HEATMAPS) and
    pafs (rows, cols, NUM_PAFS) float32.
    """
    from data_generator import render_targets

    keypoints, boxes = reference_keypoints(record)
    factor, grid_shape = oracle_grid(oracle_canvas(record, keypoints, boxes), cfg)
    scaled = keypoints.copy()
    scaled[:, :, :2] *= factor
    heatmaps, pafs = render_targets(scaled, grid_shape, cfg.stride, cfg.heatmap_sigma,
                                    cfg.paf_width)
    return heatmaps, pafs, factor


def oracle_entry(image_id, heatmaps, pafs, factor, cfg):
    """The submission entry of oracle maps parsed back: parsing.parse_poses inverts the
    factor (scale=(factor, factor)), so coordinates are in the record's original pixels."""
    from parsing import parse_poses, people_to_aic

    people, _ = parse_poses(heatmaps, pafs, cfg, stride=cfg.stride, scale=(factor, factor),
                            offset=(0, 0))
    return {"image_id": image_id,
            "keypoint_annotations": people_to_aic(people, cfg.integer_output)}


def oracle_image(record, cfg):
    """oracle_maps, then oracle_entry, of one reference record: (entry, render_s, parse_s)."""
    started = time.perf_counter()
    heatmaps, pafs, factor = oracle_maps(record, cfg)
    rendered = time.perf_counter()
    prediction = oracle_entry(record["image_id"], heatmaps, pafs, factor, cfg)
    return prediction, rendered - started, time.perf_counter() - rendered


def oracle_predictions(references, cfg, limit=None, progress=False):
    """Predictions made by rendering each reference image's ground-truth maps and parsing them.

    references: list of AIC annotation dicts (validated with parse_references; InputError if
    malformed). cfg: a Config (stride, heatmap_sigma, paf_width, inference_height and the
    parsing thresholds are used). limit: only the first `limit` records. progress: show a
    tqdm bar on stderr. Returns (predictions, timing) where predictions is a list of
    {"image_id", "keypoint_annotations"} dicts in reference order and timing is
    {"images": n, "render_ms": mean ms per image, "parse_ms": mean ms per image}.
    """
    from tqdm import tqdm

    records = references[:limit] if limit is not None else references
    parse_references(records)
    predictions, render_seconds, parse_seconds = [], 0.0, 0.0
    for record in tqdm(records, desc="oracle", unit="image", disable=not progress):
        prediction, render_time, parse_time = oracle_image(record, cfg)
        predictions.append(prediction)
        render_seconds += render_time
        parse_seconds += parse_time
    count = max(len(records), 1)
    timing = {"images": len(records), "render_ms": 1000.0 * render_seconds / count,
              "parse_ms": 1000.0 * parse_seconds / count}
    return predictions, timing


# --------------------------------------------------------------------------------------------
# Model mode: a checkpoint run over a folder of images.
# --------------------------------------------------------------------------------------------
def image_list(images_dir, references=None, limit=None):
    """[(image_id, path or None)] of the reference's images in DIR, or of all images in DIR.

    With references, a file is looked up by image_id whatever its extension (None when there is
    no such file); without, every image file in DIR is listed in sorted order.
    """
    try:
        files = sorted(name for name in os.listdir(images_dir)
                       if name.lower().endswith(utils.IMAGE_EXTENSIONS))
    except OSError as error:
        raise InputError(f"{images_dir}: cannot list images ({error.strerror or error})")
    by_id = {}
    for name in files:
        by_id.setdefault(os.path.splitext(name)[0], os.path.join(images_dir, name))
    if references is None:
        items = [(image_id, path) for image_id, path in by_id.items()]
    else:
        items = [(record["image_id"], by_id.get(record["image_id"])) for record in references]
    return items[:limit] if limit is not None else items


def readable_images(items, warnings):
    """Yield (image_id, RGB image) for [(image_id, path or None)]; an image without a file or
    that cannot be read gets a warning instead (the metric then counts it as missing)."""
    for image_id, path in items:
        if path is None:
            warnings.append(f"{image_id}: no image file found; skipped (counts as missing).")
            continue
        try:
            yield image_id, utils.read_image_rgb(path)
        except utils.ImageError as error:
            warnings.append(f"{error}; skipped (counts as missing).")


def model_predictions(model, cfg, items, warnings, progress=True, chunk_size=None, workers=1):
    """Predictions of the model for [(image_id, path)], in order, as submission entries.

    Images go through inference.estimate_poses_stream: cfg.inference_chunk images at a time
    (chunk_size overrides; 1 with workers=0 is the one-at-a-time path, which gives the same
    predictions), parsed on `workers` threads while the network runs. Coordinates are
    sub-pixel floats unless cfg.integer_output. Skipped images get a warning and no entry.
    """
    from tqdm import tqdm

    import inference
    import parsing

    predictions, warned_before = [], len(warnings)
    stream = inference.estimate_poses_stream(model, readable_images(items, warnings), cfg,
                                             chunk_size=chunk_size, workers=workers)
    with tqdm(total=len(items), desc="predict", unit="image", disable=not progress) as bar:
        for image_id, estimate in stream:
            predictions.append({"image_id": image_id, "keypoint_annotations":
                                parsing.people_to_aic(estimate.people, cfg.integer_output)})
            # Skipped images count as done too, so the bar reaches its end.
            bar.update(len(predictions) + len(warnings) - warned_before - bar.n)
    return predictions


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
def format_table(result):
    """The diagnostics as a few human-readable lines."""
    thresholds = "  ".join(f"{t:.2f}:{ap:.4f}" for t, ap in result["per_threshold"].items())
    keypoints = [f"{name} {'  n/a' if value is None else format(value, '.3f')}"
                 for name, value in zip(JOINT_NAMES, result["per_keypoint"])]
    lines = [
        f"images {result['num_images']} ({result['missing_images']} missing from the "
        f"predictions)   people: {result['num_gt']} annotated, {result['num_pred']} predicted",
        f"found (OKS > 0.5) {result['found_people']}   missed {result['missed_people']}   "
        f"spurious {result['spurious_people']}   denominator {result['denominator']}",
        f"AP@0.50 {result['ap50']:.4f}   AP@0.75 {result['ap75']:.4f}",
        "AP per OKS threshold: " + thresholds,
        "per-keypoint accuracy (found people, keypoint OKS term > 0.5):",
    ]
    for start in range(0, NUM_JOINTS, 4):
        lines.append("  " + "   ".join(keypoints[start:start + 4]))
    return lines


def json_ready(result, extra=None):
    """The result with threshold keys written "0.50" etc., plus any extra fields."""
    ready = dict(result)
    ready["per_threshold"] = {f"{t:.2f}": ap for t, ap in result["per_threshold"].items()}
    ready.update(extra or {})
    return ready


def report(result, args, extra=None):
    """Print the result (JSON line, or warnings + table + Score line); write --json_out."""
    ready = json_ready(result, extra)
    if args.json_out:
        utils.write_json_output(args.json_out, ready, indent=2)
    if args.json:
        print(json.dumps(ready))
        return
    warnings = result["warnings"]
    shown = warnings if args.max_warnings <= 0 else warnings[:args.max_warnings]
    for warning in shown:
        print("warning: " + warning)
    if len(shown) < len(warnings):
        print(f"warning: ... and {len(warnings) - len(shown)} more warnings "
              "(--max_warnings 0 shows all)")
    for key, value in (extra or {}).items():
        print(f"{key}: {value}")
    for line in format_table(result):
        print(line)
    print("Score: %.8f" % result["score"])


def build_parser():
    import inference

    parser = argparse.ArgumentParser(
        description="Score AI Challenger keypoint predictions with the official mAP "
                    "(last line: 'Score: %.8f'), make predictions with a model, or score the "
                    "oracle (ground-truth maps parsed back).",
        epilog="Without --json the last line is 'Score: %.8f' (the official evaluator's "
               "number), after warnings and a diagnostics table; with --json stdout is one line "
               "of JSON. Unreadable files and malformed references exit with status 2. "
               + inference.INFERENCE_OPTIONS_HELP)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--submit", metavar="PRED.json", help="score this submission file")
    mode.add_argument("--model", metavar="PATH",
                      help="run this checkpoint (its own config.json) or a model exported by "
                           "export.py (SavedModel folder, .onnx, .tflite; config from its "
                           "sidecar JSON) over --images (runtimes.load_for_inference); "
                           "inference options given here override its config (--preset is "
                           "not used)")
    mode.add_argument("--oracle", action="store_true",
                      help="render the reference's ground-truth maps, parse and score them")
    parser.add_argument("--ref", metavar="ANNOTATIONS.json",
                        help="official annotation file to score against (required except for "
                             "--model on test images)")
    parser.add_argument("--images", metavar="DIR", help="image folder for --model")
    parser.add_argument("--out", metavar="PRED.json",
                        help="write the predictions here (--model default: predictions.json)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="only the first N images (of the reference, or of DIR)")
    parser.add_argument("--json", action="store_true",
                        help="print only one line of JSON with the score and the breakdown")
    parser.add_argument("--json_out", "--json-out", metavar="PATH",
                        help="also write the breakdown as JSON to this file")
    parser.add_argument("--max_warnings", "--max-warnings", type=int, default=50,
                        help="warnings printed (default 50; 0: all); all are in the --json output")
    parser.add_argument("--no_progress", "--no-progress", action="store_true",
                        help="no progress bars")
    config.add_config_arguments(parser)
    return parser


def _check_arguments(parser, args):
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    if (args.submit or args.oracle) and not args.ref:
        parser.error("--submit and --oracle need --ref ANNOTATIONS.json")
    if args.model and not args.images:
        parser.error("--model needs --images DIR")


def check_outputs(args):
    """Raise utils.OutputError, before any work, when an output file of this run cannot be
    written: --out (in model mode, predictions.json by default) and --json_out."""
    out = args.out or ("predictions.json" if args.model else None)
    for path in (out, args.json_out):
        if path:
            utils.check_writable(path)


def run_submit(args):
    predictions = load_json_list(args.submit, "predictions")
    references = load_json_list(args.ref, "reference")
    report(aic_map(predictions, references), args)


def run_model(args):
    import runtimes

    references = load_json_list(args.ref, "reference") if args.ref else None
    if references is not None and args.limit is not None:
        references = references[:args.limit]
    if references is not None:
        parse_references(references)
    try:
        network, cfg = runtimes.load_for_inference(args.model,
                                                   config.overrides_from_args(args))
    except ValueError as error:  # RuntimeLoadError included: one line naming the file.
        raise InputError(str(error)) from error
    if cfg.retain_freed_memory:
        utils.retain_freed_memory()
    warnings = []
    items = image_list(args.images, references, args.limit)
    predictions = model_predictions(network, cfg, items, warnings, not args.no_progress)
    out = args.out or "predictions.json"
    utils.write_json_output(out, predictions)
    if references is None:
        for warning in warnings:
            print("warning: " + warning, file=sys.stderr)
        print(f"wrote {len(predictions)} predictions to {out}")
        return
    result = aic_map(predictions, references)
    result["warnings"] = warnings + result["warnings"]
    report(result, args, {"predictions_file": out})


def run_oracle(args):
    cfg = config.config_from_args(args)
    if cfg.retain_freed_memory:
        utils.retain_freed_memory()
    references = load_json_list(args.ref, "reference")
    if args.limit is not None:
        references = references[:args.limit]
    predictions, timing = oracle_predictions(references, cfg, progress=not args.no_progress)
    if args.out:
        utils.write_json_output(args.out, predictions)
    extra = {"render_ms_per_image": round(timing["render_ms"], 3),
             "parse_ms_per_image": round(timing["parse_ms"], 3)}
    report(aic_map(predictions, references), args, extra)


def main(argv=None):
    """Run the command line; returns the exit status (2 for unreadable or malformed input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    try:
        check_outputs(args)
        if args.submit:
            run_submit(args)
        elif args.model:
            run_model(args)
        else:
            run_oracle(args)
    except (InputError, utils.OutputError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
