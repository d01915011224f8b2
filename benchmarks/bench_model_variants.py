"""A model's official mAP under each parser option of issue 11, from one network run.

    python benchmarks/bench_model_variants.py --model CKPT --images DIR --ref ANNOTATIONS.json
                                              [--limit N] [--image-resolution] [config options]

The network runs once per image (batched, every scale of the checkpoint's config, mirror image
included); the maps are then fused and parsed under each variant and scored with the official
metric (aic_metric, Python 2's integer division included):

- "configuration": the checkpoint's config with the command line's options on top (by default
  fusion on the largest scale's grid x2, the original's limb rule, sub-pixel output);
- "limbs: >= 8 of 10" / "limbs: > 8 of 10": the two limb-acceptance rules;
- "integer output" / "sub-pixel output": coordinates rounded to whole pixels or not;
- "fusion: largest grid x1" and, with --image-resolution, "fusion: image resolution" (slow);
- "fusion: 1x grid, bilinear": the fusion used before issue 11;
- "before issue 11": 1x-grid fusion, >= 8 of 10 and integer output together (the old path
  apart from its input padding).

For the quick start's model: python benchmarks/bench_model_variants.py --model
models/quickstart/best.keras --images data/ai_challenger_keypoint_validation_20170911/
keypoint_validation_images_20170911 --ref data/ai_challenger_keypoint_validation_20170911/
keypoint_validation_annotations_20170911.json. The last line is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import aic_metric  # noqa: E402
import bench_fusion  # noqa: E402
import config  # noqa: E402
import evaluate  # noqa: E402
import inference  # noqa: E402
import parsing  # noqa: E402

# (name, config overrides, fusion method of bench_fusion.fuse or None for the config's own).
VARIANTS = (
    ("configuration", {}, None),
    ("limbs: >= 8 of 10", {"limb_acceptance": "at_least"}, None),
    ("limbs: > 8 of 10", {"limb_acceptance": "more_than"}, None),
    ("integer output", {"integer_output": True}, None),
    ("sub-pixel output", {"integer_output": False}, None),
    ("fusion: largest grid x1", {}, "largest grid x1"),
    ("fusion: 1x grid, bilinear", {}, "1x grid, bilinear"),
    ("before issue 11", {"limb_acceptance": "at_least", "integer_output": True},
     "1x grid, bilinear"),
)
IMAGE_RESOLUTION = ("fusion: image resolution", {}, "image resolution")


def parse_variant(per_scale, image, cfg, method):
    """People (N, 14, 3) of one image's ScaleMaps fused by `method` (None: cfg's fusion)."""
    height, width = image.shape[:2]
    if method is None:
        return inference.parse_image(per_scale, image.shape, cfg).people
    heatmaps, pafs, mapping = bench_fusion.fuse(method, per_scale, height, width, cfg)
    people, _ = parsing.parse_poses(heatmaps, pafs, cfg, **mapping)
    return inference.clip_to_image(people, height, width)


def predictions_per_variant(network, cfg, items, variants, warnings):
    """{variant name: submission entries}, the network run once per chunk of images."""
    predictions = {name: [] for name, _, _ in variants}
    configs = {name: dataclasses.replace(cfg, **overrides) for name, overrides, _ in variants}
    images = evaluate.readable_images(items, warnings)
    while True:
        chunk = list(itertools.islice(images, cfg.inference_chunk))
        if not chunk:
            return predictions
        maps = inference.network_maps(network, [image for _, image in chunk], cfg)
        for (image_id, image), per_scale in zip(chunk, maps):
            for name, _, method in variants:
                people = parse_variant(per_scale, image, configs[name], method)
                predictions[name].append({"image_id": image_id, "keypoint_annotations":
                                          parsing.people_to_aic(
                                              people, configs[name].integer_output)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, metavar="CKPT", help="checkpoint")
    parser.add_argument("--images", required=True, metavar="DIR", help="image folder")
    parser.add_argument("--ref", required=True, metavar="ANNOTATIONS.json")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--image-resolution", "--image_resolution", action="store_true",
                        help="also fuse at image resolution (slow)")
    config.add_config_arguments(parser)
    args = parser.parse_args(argv)
    import model

    network, checkpoint_cfg = model.load_checkpoint(args.model)
    cfg = dataclasses.replace(checkpoint_cfg, **config.overrides_from_args(args))
    references = aic_metric.load_json_list(args.ref, "reference")[:args.limit]
    items = evaluate.image_list(args.images, references)
    variants = VARIANTS + ((IMAGE_RESOLUTION,) if args.image_resolution else ())
    started, warnings = time.perf_counter(), []
    predictions = predictions_per_variant(network, cfg, items, variants, warnings)
    scores = {name: aic_metric.aic_map(entries, references)
              for name, entries in predictions.items()}
    print(f"{args.model}: {len(items)} images, scales {tuple(cfg.scales)}, flip "
          f"{cfg.flip_test}; {time.perf_counter() - started:.0f} s; {len(warnings)} skipped")
    print(f"{'variant':30s}{'mAP':>9s}{'AP50':>8s}{'AP75':>8s}")
    for name, result in scores.items():
        print(f"{name:30s}{result['score']:9.5f}{result['ap50']:8.4f}{result['ap75']:8.4f}")
    print(json.dumps({"model": args.model, "images": len(items), "scales": list(cfg.scales),
                      "settings": {"limb_acceptance": cfg.limb_acceptance,
                                   "fusion_upsample": cfg.fusion_upsample,
                                   "integer_output": cfg.integer_output},
                      "map": {name: round(result["score"], 6)
                              for name, result in scores.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
