"""Export a trained checkpoint to a SavedModel, ONNX or LiteRT, and check it against Keras.

    python export.py --model models/cpu/best.keras --format onnx          # models/cpu/best.onnx
    python export.py --model models/cpu/best.keras --format saved_model   # best_saved_model/
    python export.py --model models/cpu/best.keras --format litert        # float32, float16, int8
    python export.py --model M.keras --format litert --litert_quantization int8 --out m.tflite
    python export.py --model models/cpu/best.keras --format saved_model onnx litert   # all

The artefact takes a float32 RGB batch "image" (N, H, W, 3), values 0..255, any H and W that are
multiples of the stride (the network normalises its input itself), and returns the last stage's
maps "heatmaps" and "pafs" (the only maps inference uses). Beside it, PATH.json holds what a
runtime needs to parse (runtimes.sidecar): stride, keypoint and limb order, input layout and
normalisation, the run's config with its parser settings. Inference settings given here
(--scales 1 ...) are stored in it.

Unless --no_check, each artefact is checked against the Keras model on sample images
(images/samples/, or --images DIR): the network maps at every scale and mirror image must agree
within the format's tolerance (PARITY_TOLERANCE), and the people the parser finds in both are
compared with the official metric (the artefact's people scored against Keras's: 1.0 is the
same people); with --ref ANNOTATIONS.json, both models' mAP against it and the difference.
Exit status: 0 exported and checked, 1 a parity check failed (the artefact is kept), 2 bad
input (unknown format, missing package, checkpoint without its config.json). JSON on the last
line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

import config
import runtimes
import utils

LITERT_QUANTIZATIONS = ("float32", "float16", "int8")
# Largest absolute difference allowed between an artefact's maps and the Keras model's (maps are
# about 0..1). float32 artefacts compute the same operations in another order; float16 weights
# and int8 dynamic-range weights (activations quantised on the fly) lose precision by design.
# On 100 synthetic validation images the quick-start model's largest differences were 2.3e-6
# (float32), 7.9e-3 (float16) and 0.11 (int8), its mean differences 1e-8, 1.2e-5 and 3.7e-4;
# the quantised tolerances are about three times those largest differences.
PARITY_TOLERANCE = {"float32": 1e-4, "float16": 0.03, "int8": 0.3}
DEFAULT_SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images", "samples")


class ExportError(Exception):
    """A problem to report in one line before exiting with status 2."""


# --------------------------------------------------------------------------------------------
# Writing the artefacts
# --------------------------------------------------------------------------------------------
def serving_function(network):
    """fn(image) -> {"heatmaps", "pafs"} of the last stage, for Keras' exporters."""
    def serve(image):
        outputs = network(image, training=False)
        return {"heatmaps": outputs[-1], "pafs": outputs[-2]}

    return serve


def input_signature():
    import tensorflow as tf

    return [tf.TensorSpec([None, None, None, 3], tf.float32, name=runtimes.INPUT_NAME)]


def write_saved_model(network, folder):
    """A SavedModel whose serving_default signature maps "image" to {"heatmaps", "pafs"}."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(runtimes.SIGNATURE, serving_function(network),
                         input_signature=input_signature())
    archive.write_out(folder, verbose=False)


def write_onnx(network, path):
    """An ONNX file by Keras' exporter (tf2onnx under TensorFlow), outputs named by key."""
    import keras

    runtimes.import_package("tf2onnx", "tf2onnx", "exporting to ONNX")
    heads = keras.Model(network.inputs, {"heatmaps": network.outputs[-1],
                                         "pafs": network.outputs[-2]})
    heads.export(path, format="onnx", input_signature=input_signature(), verbose=False)


def litert_bytes(saved_model, quantization):
    """LiteRT flatbuffer of a SavedModel folder: float32, float16 weights or int8 weights
    (dynamic range: activations stay float and are quantised on the fly)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    if quantization in ("float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def atomic_folder(write, destination):
    """write(temporary folder), then put it at `destination` (replacing a previous one)."""
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
    try:
        write(os.path.join(staging, "new"))
        if os.path.exists(destination):
            os.rename(destination, os.path.join(staging, "old"))
        os.rename(os.path.join(staging, "new"), destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def artefact_paths(checkpoint, kind, out, quantizations):
    """[(path, quantization)] of the artefacts to write (defaults beside the checkpoint)."""
    stem = os.path.splitext(os.path.normpath(checkpoint))[0]
    if kind == "saved_model":
        return [(out or stem + "_saved_model", "float32")]
    if kind == "onnx":
        return [(out or stem + ".onnx", "float32")]
    if out and len(quantizations) == 1:
        return [(out, quantizations[0])]
    base = os.path.splitext(out)[0] if out else stem
    return [(f"{base}_{quantization}.tflite", quantization) for quantization in quantizations]


def write_litert(network, targets, saved_model=None):
    """The LiteRT files of targets [(path, quantization)], converted from the SavedModel
    folder `saved_model` (one written by this export), else from one written meanwhile."""
    with tempfile.TemporaryDirectory(prefix=".tmp-export-") as staging:
        if saved_model is None:
            saved_model = os.path.join(staging, "saved_model")
            write_saved_model(network, saved_model)
        for path, quantization in targets:
            data = litert_bytes(saved_model, quantization)
            with utils.atomic_path(path) as temporary:
                with open(temporary, "wb") as handle:
                    handle.write(data)


def export(network, cfg, kind, targets, saved_model=None):
    """Write each (path, quantization) of `targets` in format `kind` and its sidecar; LiteRT
    files are converted from the SavedModel folder `saved_model` when one is given."""
    if kind == "saved_model":
        atomic_folder(lambda folder: write_saved_model(network, folder), targets[0][0])
    elif kind == "onnx":
        with utils.atomic_path(targets[0][0]) as temporary:
            write_onnx(network, temporary)
    else:
        write_litert(network, targets, saved_model)
    for path, quantization in targets:
        utils.atomic_write_json(runtimes.sidecar_path(path),
                                runtimes.sidecar(cfg, kind, quantization), indent=2)


# --------------------------------------------------------------------------------------------
# Parity with the Keras model
# --------------------------------------------------------------------------------------------
def sample_images(folder, limit):
    """[(image_id, RGB image)] of up to `limit` images of a folder, sorted by name."""
    names = sorted(name for name in os.listdir(folder)
                   if name.lower().endswith(utils.IMAGE_EXTENSIONS))[:limit]
    return [(os.path.splitext(name)[0], utils.read_image_rgb(os.path.join(folder, name)))
            for name in names]


def maps_and_people(network, images, cfg):
    """(per-image lists of ScaleMaps, submission entries) of a model on [(id, image)]."""
    import inference

    pictures = [image for _, image in images]
    maps = inference.network_maps(network, pictures, cfg)
    entries = []
    for (image_id, image), per_scale in zip(images, maps):
        estimate = inference.parse_image(per_scale, image.shape, cfg)
        entries.append({"image_id": image_id, "keypoint_annotations":
                        inference.people_to_aic(estimate.people)})
    return maps, entries


def as_references(entries):
    """Submission entries as reference records: found joints v = 1, boxes around them."""
    references = []
    for entry in entries:
        keypoints, boxes = {}, {}
        for name, values in entry["keypoint_annotations"].items():
            person = np.asarray(values, dtype=np.float64).reshape(-1, 3)
            found = person[:, 2] > 0
            person[~found] = (0, 0, config.UNLABELLED)
            keypoints[name] = person.ravel().tolist()
            low, high = person[found, :2].min(axis=0), person[found, :2].max(axis=0)
            boxes[name] = [float(low[0]), float(low[1]), float(high[0]), float(high[1])]
        references.append({"image_id": entry["image_id"], "keypoint_annotations": keypoints,
                           "human_annotations": boxes})
    return references


def map_differences(maps, other_maps):
    """(largest |difference| of heatmaps, of pafs, mean |difference| of both) over every
    image and scale of two models' ScaleMaps."""
    worst, total, count = [0.0, 0.0], 0.0, 0
    for per_scale, other in zip(maps, other_maps):
        for first, second in zip(per_scale, other):
            for index, name in enumerate(("heatmaps", "pafs")):
                difference = np.abs(getattr(first, name) - getattr(second, name))
                worst[index] = max(worst[index], float(difference.max()))
                total, count = total + float(difference.sum()), count + difference.size
    return worst[0], worst[1], total / max(count, 1)


def parity(reference, artefact, images, cfg, quantization, truth=None):
    """The comparison of an artefact with the Keras model on [(id, image)] (a dict).

    reference: (maps, entries) of the Keras model (maps_and_people); truth: optional reference
    annotations, for both models' mAP against them.
    """
    from aic_metric import aic_map

    maps, entries = maps_and_people(artefact, images, cfg)
    heatmaps, pafs, mean = map_differences(reference[0], maps)
    tolerance = PARITY_TOLERANCE[quantization]
    agreement = aic_map(entries, as_references(reference[1]))
    # Two models that both find nobody agree completely (the metric itself would say 0).
    nobody = agreement["num_gt"] == agreement["num_pred"] == 0
    result = {"max_abs_heatmaps": heatmaps, "max_abs_pafs": pafs, "mean_abs": mean,
              "tolerance": tolerance,
              "people_keras": agreement["num_gt"], "people_artefact": agreement["num_pred"],
              "agreement_map": 1.0 if nobody else agreement["score"],
              "passed": max(heatmaps, pafs) <= tolerance}
    if truth is not None:
        keras_map = aic_map(reference[1], truth)["score"]
        artefact_map = aic_map(entries, truth)["score"]
        result.update(keras_map=keras_map, artefact_map=artefact_map,
                      map_difference=artefact_map - keras_map)
    return result


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        description="Export a checkpoint to a SavedModel, ONNX or LiteRT (dynamic height and "
                    "width, outputs: last stage's heatmaps and pafs, a JSON sidecar beside it) "
                    "and check the artefact's maps and people against the Keras model.",
        epilog="Exit status 0: exported and checked; 1: a parity check failed; 2: bad input. "
               "The last line is JSON.", allow_abbrev=False)
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="checkpoint (.keras with config.json beside it) or run folder")
    parser.add_argument("--format", required=True, nargs="+", metavar="FORMAT",
                        choices=("saved_model", "onnx", "litert"),
                        help="artefact format(s): saved_model, onnx, litert (several at once "
                             "share one model load and parity run)")
    parser.add_argument("--out", metavar="PATH",
                        help="artefact path (default beside the checkpoint: best.onnx, "
                             "best_saved_model/, best_<quantization>.tflite); for several "
                             "LiteRT files, PATH's stem gets _float32.tflite etc.")
    parser.add_argument("--litert_quantization", "--litert-quantization", default="all",
                        choices=LITERT_QUANTIZATIONS + ("all",),
                        help="LiteRT weights: float32, float16, int8 (dynamic range) or all "
                             "three (default)")
    parser.add_argument("--no_check", "--no-check", action="store_true",
                        help="skip the parity check against the Keras model")
    parser.add_argument("--images", metavar="DIR", default=DEFAULT_SAMPLES,
                        help="images of the parity check (default: the repository's "
                             "images/samples/)")
    parser.add_argument("--limit", type=int, default=8, metavar="N",
                        help="at most N images of --images (default 8)")
    parser.add_argument("--ref", metavar="ANNOTATIONS.json",
                        help="also score both models against these annotations (mAP "
                             "difference); --images must hold their images")
    config.add_config_arguments(parser)
    return parser


def export_config(checkpoint_cfg, args):
    """The checkpoint's config with the inference and video settings given here on top
    (config.inference_config: the rule demo.py and evaluate.py follow)."""
    try:
        return config.inference_config(checkpoint_cfg, config.overrides_from_args(args))
    except ValueError as error:
        raise ExportError(str(error)) from None


def check_packages(formats, check):
    """MissingPackageError before any work when a package that `formats` need is absent."""
    if "onnx" in formats:
        runtimes.import_package("tf2onnx", "tf2onnx", "exporting to ONNX")
        if check:
            runtimes.import_package("onnxruntime", "onnxruntime", "checking the .onnx file")
    if check and "litert" in formats:
        runtimes.litert_interpreter_class()


def check_artefacts(network, cfg, targets, args):
    """Parity results of every artefact (list of dicts) on the sample images."""
    from aic_metric import load_json_list, parse_references

    if not os.path.isdir(args.images):
        raise ExportError(f"{args.images}: no such folder of images for the parity check "
                          "(pass --images DIR or --no_check)")
    images = sample_images(args.images, args.limit)
    if not images:
        raise ExportError(f"{args.images}: no images for the parity check")
    truth = None
    if args.ref:
        ids = {image_id for image_id, _ in images}
        truth = [record for record in load_json_list(args.ref, "reference")
                 if record.get("image_id") in ids]
        parse_references(truth)
    reference = maps_and_people(runtimes.KerasRuntime(network), images, cfg)
    results = []
    for path, quantization in targets:
        artefact, _ = runtimes.load(path, cfg.runtime_threads)
        result = parity(reference, artefact, images, cfg, quantization, truth)
        results.append(dict(result, path=path, quantization=quantization))
    return results


def describe(path, quantization, result):
    """One line about an artefact and its check."""
    size = artefact_size(path)
    line = f"{path} ({quantization}, {size / 1e6:.2f} MB)"
    if result is None:
        return line + ": not checked"
    verdict = "ok" if result["passed"] else "FAILED"
    line += (f": max |difference| heatmaps {result['max_abs_heatmaps']:.2e}, pafs "
             f"{result['max_abs_pafs']:.2e} (tolerance {result['tolerance']:g}) {verdict}, "
             f"mean {result['mean_abs']:.1e}; "
             f"people {result['people_artefact']} vs Keras {result['people_keras']}, "
             f"agreement mAP {result['agreement_map']:.4f}")
    if "map_difference" in result:
        line += (f"; mAP {result['artefact_map']:.4f} vs Keras {result['keras_map']:.4f} "
                 f"(difference {result['map_difference']:+.4f})")
    return line


def artefact_size(path):
    """Bytes of a file, or of every file in a folder."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(path) for name in names)
    return os.path.getsize(path)


def export_formats(network, cfg, args):
    """Write every format asked for; [(format, path, quantization)] of the artefacts."""
    formats = list(dict.fromkeys(args.format))
    quantizations = (LITERT_QUANTIZATIONS if args.litert_quantization == "all"
                     else (args.litert_quantization,))
    written, saved_model = [], None
    for kind in sorted(formats, key=("saved_model", "onnx", "litert").index):
        targets = artefact_paths(args.model, kind, args.out, quantizations)
        export(network, cfg, kind, targets, saved_model)
        saved_model = targets[0][0] if kind == "saved_model" else saved_model
        written += [(kind, path, quantization) for path, quantization in targets]
    return written


def run(args):
    """Export and check; returns the exit status (0 or 1). Raises ExportError and friends."""
    import model as model_module

    check_packages(args.format, not args.no_check)
    try:
        network, checkpoint_cfg = model_module.load_checkpoint(args.model)
    except (OSError, ValueError) as error:
        raise ExportError(" ".join(str(error).split()))
    cfg = export_config(checkpoint_cfg, args)
    written = export_formats(network, cfg, args)
    targets = [(path, quantization) for _, path, quantization in written]
    results = [None] * len(targets) if args.no_check else check_artefacts(network, cfg,
                                                                          targets, args)
    summary = []
    for (kind, path, quantization), result in zip(written, results):
        print(describe(path, quantization, result))
        summary.append(dict(result or {}, format=kind, path=path, quantization=quantization,
                            bytes=artefact_size(path), sidecar=runtimes.sidecar_path(path)))
    print(json.dumps({"artefacts": summary}))
    return 0 if all(result is None or result["passed"] for result in results) else 1


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    if args.limit < 1:
        build_parser().error("--limit must be >= 1")
    if args.out and len(set(args.format)) > 1:
        build_parser().error("--out names one artefact: give one --format with it")
    try:
        return run(args)
    except (ExportError, runtimes.RuntimeLoadError, ValueError) as error:
        print(f"export.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
