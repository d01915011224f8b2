"""Export a trained checkpoint to a SavedModel, ONNX, LiteRT or OpenVINO; check it against Keras.

    python export.py --model models/cpu/best.keras --format onnx          # models/cpu/best.onnx
    python export.py --model models/cpu/best.keras --format saved_model   # best_saved_model/
    python export.py --model models/cpu/best.keras --format litert        # float32, float16, int8
    python export.py --model M.keras --format litert --litert_quantization int8 --out m.tflite
    python export.py --model models/cpu/best.keras --format openvino      # best.xml + best.bin
    python export.py --model M.keras --format openvino --openvino_quantization int8  # best_int8.xml
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
OpenVINO models are checked in f32 and, where the CPU computes bfloat16, in bf16 too.

OpenVINO int8 is static post-training quantisation by NNCF (weights and activations int8),
calibrated on --calibration_images DIR, else on up to --calibration_limit of the run's training
images (records_dir/train.jsonl, written by pre-process.py), each resized and padded at the
inference height exactly as inference.py prepares the network's input.

Exit status: 0 exported and checked, 1 a parity check failed (the artefact is kept), 2 bad
input (unknown format, missing package, checkpoint without its config.json, an unusable
checkpoint, output path or calibration folder: one line, nothing written). JSON on the last
line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np

import config
import runtimes
import utils

FORMATS = ("saved_model", "onnx", "litert", "openvino")
LITERT_QUANTIZATIONS = ("float32", "float16", "int8")
# --openvino_quantization: none is the float32 model, int8 NNCF's static quantisation of it.
OPENVINO_QUANTIZATIONS = {"none": "float32", "int8": "int8"}
# The file name each format's runtime recognises (runtimes.format_of); saved_model is a folder.
EXTENSIONS = {"onnx": ".onnx", "litert": ".tflite", "openvino": ".xml"}
# Calibration images of OpenVINO int8 by default: NNCF's own default subset size.
CALIBRATION_LIMIT = 300
# Largest absolute difference allowed between an artefact's maps and the Keras model's (maps are
# about 0..1). float32 artefacts compute the same operations in another order; float16 weights
# and int8 dynamic-range weights (activations quantised on the fly) lose precision by design.
# On 100 synthetic validation images the quick-start model's largest differences were 2.3e-6
# (float32), 7.9e-3 (float16) and 0.11 (int8), its mean differences 1e-8, 1.2e-5 and 3.7e-4;
# the quantised tolerances are about three times those largest differences.
# bfloat16 (OpenVINO's bf16 precision, 8 significant bits against float16's 11) is held to
# int8's bound: the light quick-start model's largest bf16 differences were 0.025 (heatmaps)
# and 0.045 (PAFs) on 200 synthetic validation images. PAF components span -1..1, twice the
# heatmaps' 0..1, so their bound is PAF_TOLERANCE_FACTOR times the heatmaps' (OpenVINO int8
# of that light model: 0.27 and 0.45, its mAP within 0.002 of Keras; docs/deployment.md).
PARITY_TOLERANCE = {"float32": 1e-4, "float16": 0.03, "int8": 0.3, "bfloat16": 0.3}
PAF_TOLERANCE_FACTOR = 2.0
DEFAULT_SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images", "samples")
LOGGER = logging.getLogger("export")


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

    runtimes.import_package("tf2onnx", "tf2onnx", "exporting to ONNX", "requirements.txt")
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
    if kind == "openvino":  # The float32 model is best.xml, as the ONNX one is best.onnx.
        return [(base + ("" if quantization == "float32" else "_" + quantization) + ".xml",
                 quantization) for quantization in quantizations]
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


def save_openvino(ov, model, path):
    """ov.save_model as float32 IR at `path` (.xml) and its .bin, each put in place by a
    rename: the old .xml goes first and the new one comes last, so a crash leaves the old
    pair, no .xml, or the new pair, never an .xml beside weights that are not its own."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
    try:
        # compress_to_fp16 defaults to True, which would halve the weights' precision.
        ov.save_model(model, os.path.join(staging, "model.xml"), compress_to_fp16=False)
        if os.path.exists(path):
            os.replace(path, os.path.join(staging, "old.xml"))
        os.replace(os.path.join(staging, "model.bin"), os.path.splitext(path)[0] + ".bin")
        os.replace(os.path.join(staging, "model.xml"), path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def residual_adds(model):
    """Friendly names of the ov.Model's Add operations whose two inputs are both computed
    (residual connections), as opposed to the Adds of a bias or a constant shift."""
    return [operation.get_friendly_name() for operation in model.get_ordered_ops()
            if operation.get_type_name() == "Add"
            and all(operation.input_value(index).get_node().get_type_name() != "Constant"
                    for index in range(operation.get_input_size()))]


def quantize_openvino(model, calibration):
    """NNCF's static int8 post-training quantisation of an ov.Model, its activation ranges
    measured on `calibration` (list of uint8 network inputs (1, H, W, 3)).

    Residual Adds stay in float: one int8 scale for the sum of two branches of different
    ranges cost the light network a third of its people agreement with float32 (0.965 to
    0.654) and 0.02 mAP, for a network of 8.0 ms instead of 10.7 at 368x368
    (docs/deployment.md). The paper and cpu networks have none.
    """
    nncf = runtimes.import_package("nncf", "nncf", "OpenVINO int8 quantisation",
                                   "requirements.txt")
    dataset = nncf.Dataset(calibration, lambda item: {runtimes.INPUT_NAME:
                                                      item.astype(np.float32)})
    kept_float = residual_adds(model)
    ignored = nncf.IgnoredScope(names=kept_float) if kept_float else None
    return nncf.quantize(model, dataset, subset_size=len(calibration),
                         target_device=nncf.TargetDevice.CPU, ignored_scope=ignored)


def write_openvino(network, targets, saved_model=None, calibration=None):
    """OpenVINO IRs of targets [(path, quantization)], float32 or int8, converted from the
    SavedModel folder `saved_model` (else one written meanwhile); int8 is calibrated on
    `calibration` (see quantize_openvino)."""
    ov = runtimes.import_package("openvino", "openvino", "exporting to OpenVINO",
                                     "requirements.txt")
    with tempfile.TemporaryDirectory(prefix=".tmp-export-") as staging:
        if saved_model is None:
            saved_model = os.path.join(staging, "saved_model")
            write_saved_model(network, saved_model)
        # The SavedModel's signature gives the IR its names: input "image" (N, H, W, 3) with
        # open dimensions, outputs "heatmaps" and "pafs".
        # Saved inside the block: the converted model may still read the SavedModel's files.
        converted = ov.convert_model(saved_model)
        for path, quantization in targets:
            model = quantize_openvino(converted, calibration) if quantization == "int8" \
                else converted
            save_openvino(ov, model, path)


def export(network, cfg, kind, targets, saved_model=None, calibration=None):
    """Write each (path, quantization) of `targets` in format `kind` and its sidecar; LiteRT
    and OpenVINO models are converted from the SavedModel folder `saved_model` when one is
    given; OpenVINO int8 is calibrated on `calibration` (calibration_inputs)."""
    if kind == "saved_model":
        atomic_folder(lambda folder: write_saved_model(network, folder), targets[0][0])
    elif kind == "onnx":
        with utils.atomic_path(targets[0][0]) as temporary:
            write_onnx(network, temporary)
    elif kind == "openvino":
        write_openvino(network, targets, saved_model, calibration)
    else:
        write_litert(network, targets, saved_model)
    for path, quantization in targets:
        utils.atomic_write_json(runtimes.sidecar_path(path),
                                runtimes.sidecar(cfg, kind, quantization), indent=2)


# --------------------------------------------------------------------------------------------
# Calibration images of OpenVINO int8
# --------------------------------------------------------------------------------------------
def calibration_input(image, cfg):
    """The network input inference.py makes of an RGB image at the inference height (scale 1):
    resized, padded to the stride and input bucket; uint8 (1, H, W, 3). uint8 loses nothing:
    the resized uint8 image and the integer pad value are whole numbers 0..255."""
    import inference

    size = inference.input_size(image.shape[0], image.shape[1], cfg)
    prepared = inference.prepare_input(image, size, inference.padded_size(size, cfg), cfg)
    return prepared.astype(np.uint8)[None]


def calibration_candidates(cfg, folder, limit):
    """(image paths to calibrate on, what they come from): `folder`'s images sorted by name,
    else `limit` of the run's training records spread evenly over them."""
    if folder:
        if not os.path.isdir(folder):
            raise ExportError(f"{folder}: no such folder of calibration images")
        names = sorted(name for name in os.listdir(folder)
                       if name.lower().endswith(utils.IMAGE_EXTENSIONS))
        if not names:
            raise ExportError(f"{folder}: no images ({', '.join(utils.IMAGE_EXTENSIONS)}) "
                              "to calibrate OpenVINO int8 on")
        return [os.path.join(folder, name) for name in names], folder
    import data_generator

    try:
        records = data_generator.load_records(cfg, "train")
    except (OSError, ValueError) as error:
        raise ExportError(f"OpenVINO int8 needs calibration images: {error}; or pass "
                          "--calibration_images DIR") from None
    picks = np.unique(np.linspace(0, len(records) - 1, min(limit, len(records))).astype(int))
    return [records.paths[index] for index in picks], os.path.join(cfg.records_dir,
                                                                    "train.jsonl")


def calibration_inputs(cfg, folder, limit):
    """Up to `limit` calibration inputs (calibration_input) of the readable candidate images;
    ExportError, before anything is written, when none can be read."""
    paths, source = calibration_candidates(cfg, folder, limit)
    inputs, failures = [], []
    for path in paths:
        if len(inputs) == limit:
            break
        try:
            inputs.append(calibration_input(utils.read_image_rgb(path), cfg))
        except utils.ImageError as error:
            failures.append(error)
    if not inputs:
        raise ExportError(f"{source}: none of its {len(failures)} calibration images can be "
                          f"read (first: {failures[0]})")
    if failures:
        LOGGER.warning("%s: %d unreadable calibration images skipped (first: %s)", source,
                       len(failures), failures[0])
    return inputs


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
    import parsing

    pictures = [image for _, image in images]
    maps = inference.network_maps(network, pictures, cfg)
    entries = []
    for (image_id, image), per_scale in zip(images, maps):
        estimate = inference.parse_image(per_scale, image.shape, cfg)
        entries.append({"image_id": image_id, "keypoint_annotations":
                        parsing.people_to_aic(estimate.people)})
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


def parity_tolerance(quantization, precision=None):
    """The largest map difference allowed for an artefact of `quantization` run in OpenVINO
    `precision` (None: another runtime): bf16 arithmetic loosens a float32 model's bound."""
    if precision == "bf16":
        return max(PARITY_TOLERANCE[quantization], PARITY_TOLERANCE["bfloat16"])
    return PARITY_TOLERANCE[quantization]


def parity(reference, artefact, images, cfg, quantization, truth=None, precision=None):
    """The comparison of an artefact with the Keras model on [(id, image)] (a dict).

    reference: (maps, entries) of the Keras model (maps_and_people); truth: optional reference
    annotations, for both models' mAP against them; precision: OpenVINO's, which ran.
    """
    from aic_metric import aic_map

    maps, entries = maps_and_people(artefact, images, cfg)
    heatmaps, pafs, mean = map_differences(reference[0], maps)
    tolerance = parity_tolerance(quantization, precision)
    agreement = aic_map(entries, as_references(reference[1]))
    # Two models that both find nobody agree completely (the metric itself would say 0).
    nobody = agreement["num_gt"] == agreement["num_pred"] == 0
    result = {"max_abs_heatmaps": heatmaps, "max_abs_pafs": pafs, "mean_abs": mean,
              "tolerance": tolerance, "tolerance_pafs": PAF_TOLERANCE_FACTOR * tolerance,
              "people_keras": agreement["num_gt"], "people_artefact": agreement["num_pred"],
              "agreement_map": 1.0 if nobody else agreement["score"],
              "passed": heatmaps <= tolerance and pafs <= PAF_TOLERANCE_FACTOR * tolerance}
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
        description="Export a checkpoint to a SavedModel, ONNX, LiteRT or OpenVINO (dynamic "
                    "height and width, outputs: last stage's heatmaps and pafs, a JSON sidecar "
                    "beside it) and check the artefact's maps and people against the Keras "
                    "model.",
        epilog="Exit status 0: exported and checked; 1: a parity check failed; 2: bad input. "
               "The last line is JSON.", allow_abbrev=False)
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="checkpoint (.keras with config.json beside it) or run folder")
    parser.add_argument("--format", required=True, nargs="+", metavar="FORMAT",
                        choices=FORMATS,
                        help="artefact format(s): saved_model, onnx, litert, openvino (several "
                             "at once share one model load and parity run)")
    parser.add_argument("--out", metavar="PATH",
                        help="artefact path (default beside the checkpoint: best.onnx, "
                             "best_saved_model/, best_<quantization>.tflite, best.xml, "
                             "best_int8.xml); for several LiteRT or OpenVINO files, PATH's stem "
                             "gets _float32.tflite, _int8.xml etc.")
    parser.add_argument("--litert_quantization", "--litert-quantization", default="all",
                        choices=LITERT_QUANTIZATIONS + ("all",),
                        help="LiteRT weights: float32, float16, int8 (dynamic range) or all "
                             "three (default)")
    parser.add_argument("--openvino_quantization", "--openvino-quantization", nargs="+",
                        default=["none"], choices=tuple(OPENVINO_QUANTIZATIONS),
                        help="OpenVINO model(s): none (float32, the default) and/or int8 "
                             "(NNCF static post-training quantisation, calibrated)")
    parser.add_argument("--calibration_images", "--calibration-images", metavar="DIR",
                        help="images to calibrate OpenVINO int8 on (default: the run's "
                             "training images, from records_dir/train.jsonl)")
    parser.add_argument("--calibration_limit", "--calibration-limit", type=int,
                        default=CALIBRATION_LIMIT, metavar="N",
                        help=f"at most N calibration images (default {CALIBRATION_LIMIT})")
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


def wants_int8(args):
    return "openvino" in args.format and "int8" in args.openvino_quantization


def check_packages(args):
    """MissingPackageError before any work when a package that the export needs is absent."""
    check = not args.no_check
    if "onnx" in args.format:
        runtimes.import_package("tf2onnx", "tf2onnx", "exporting to ONNX", "requirements.txt")
        if check:
            runtimes.import_package("onnxruntime", "onnxruntime", "checking the .onnx file")
    if check and "litert" in args.format:
        runtimes.litert_interpreter_class()
    if "openvino" in args.format:
        runtimes.import_package("openvino", "openvino", "exporting to OpenVINO",
                                "requirements.txt")
    if wants_int8(args):
        runtimes.import_package("nncf", "nncf", "OpenVINO int8 quantisation",
                                "requirements.txt")


def planned_artefacts(args):
    """[(format, [(path, quantization)])] of what this export writes, in writing order."""
    quantizations = {
        "litert": (LITERT_QUANTIZATIONS if args.litert_quantization == "all"
                   else (args.litert_quantization,)),
        "openvino": tuple(OPENVINO_QUANTIZATIONS[name] for name in OPENVINO_QUANTIZATIONS
                          if name in args.openvino_quantization)}
    return [(kind, artefact_paths(args.model, kind, args.out,
                                  quantizations.get(kind, ("float32",))))
            for kind in FORMATS if kind in args.format]


def check_output_folder(path):
    """utils.OutputError unless the folder of `path`, or its nearest existing ancestor when it
    is missing, takes new files. Creates nothing: a failed export leaves no empty folders
    (the artefact's writer makes the folders it needs)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        if os.path.exists(folder):
            raise utils.OutputError(f"{path}: cannot write this file ({folder} is not a folder)")
        folder = os.path.dirname(folder)
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise utils.OutputError(f"{path}: cannot write this file ({utils.os_reason(error)})") \
            from None


def check_outputs(args, plan):
    """ExportError or utils.OutputError, before the model is loaded, for an --out that its
    format's runtime would not recognise or any artefact that cannot be written."""
    for kind, targets in plan:
        extension = EXTENSIONS.get(kind)
        if args.out and extension and not args.out.lower().endswith(extension):
            raise ExportError(f"{args.out}: the {kind} artefact's name must end in "
                              f"{extension} (runtimes.py recognises the format by it)")
        for path, _ in targets:
            if kind != "saved_model" and os.path.isdir(path):
                raise utils.OutputError(f"{path}: cannot write this file (it is a folder)")
            check_output_folder(path)
    if args.calibration_images and not wants_int8(args):
        raise ExportError("--calibration_images is only used by --format openvino "
                          "--openvino_quantization int8")


def parity_images(args):
    """([(id, RGB image)] of the parity check, reference annotations or None), read before
    anything is written, so that a bad --images or --ref writes nothing."""
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
    return images, truth


def check_runs(written):
    """[(format, path, quantization, precision)] to check: each artefact once, an OpenVINO
    one in f32 and, where the CPU computes bfloat16, in bf16 too (precision None elsewhere)."""
    precisions = ("f32",)
    if any(kind == "openvino" for kind, _, _ in written):
        ov = runtimes.import_package("openvino", "openvino", "checking the OpenVINO model")
        if runtimes.cpu_has_bf16(ov.Core()):
            precisions = ("f32", "bf16")
        else:
            print("OpenVINO bf16 not checked: this CPU has no bfloat16 (OpenVINO's CPU "
                  "OPTIMIZATION_CAPABILITIES lack BF16)")
    return [(kind, path, quantization, precision)
            for kind, path, quantization in written
            for precision in (precisions if kind == "openvino" else (None,))]


def check_artefacts(network, cfg, runs, images, truth):
    """Parity results (list of dicts) of every run of check_runs on the parity images."""
    reference = maps_and_people(runtimes.KerasRuntime(network), images, cfg)
    results = []
    for kind, path, quantization, precision in runs:
        artefact, _ = runtimes.load(path, cfg.runtime_threads, precision)
        # The precision that ran, which OpenVINO may have chosen differently from the request.
        ran = getattr(artefact, "precision", None)
        result = parity(reference, artefact, images, cfg, quantization, truth, ran)
        results.append(dict(result, precision=ran) if ran else result)
    return results


def describe(path, quantization, result, precision=None):
    """One line about an artefact and its check."""
    size = artefact_size(path)
    runs_in = f", runs in {precision}" if precision else ""
    line = f"{path} ({quantization}{runs_in}, {size / 1e6:.2f} MB)"
    if result is None:
        return line + ": not checked"
    verdict = "ok" if result["passed"] else "FAILED"
    line += (f": max |difference| heatmaps {result['max_abs_heatmaps']:.2e}, pafs "
             f"{result['max_abs_pafs']:.2e} (tolerance {result['tolerance']:g} and "
             f"{result['tolerance_pafs']:g}) {verdict}, "
             f"mean {result['mean_abs']:.1e}; "
             f"people {result['people_artefact']} vs Keras {result['people_keras']}, "
             f"agreement mAP {result['agreement_map']:.4f}")
    if "map_difference" in result:
        line += (f"; mAP {result['artefact_map']:.4f} vs Keras {result['keras_map']:.4f} "
                 f"(difference {result['map_difference']:+.4f})")
    return line


def artefact_size(path):
    """Bytes of a file (an OpenVINO .xml with its .bin), or of every file in a folder."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(path) for name in names)
    weights = os.path.splitext(path)[0] + ".bin"
    extra = os.path.getsize(weights) if path.endswith(".xml") and os.path.isfile(weights) else 0
    return os.path.getsize(path) + extra


def export_formats(network, cfg, plan, calibration=None):
    """Write every artefact of `plan` (planned_artefacts); [(format, path, quantization)].
    LiteRT and OpenVINO share one SavedModel: the exported one, else a temporary one."""
    written, saved_model = [], None
    with tempfile.TemporaryDirectory(prefix=".tmp-export-") as staging:
        for kind, targets in plan:
            if kind in ("litert", "openvino") and saved_model is None:
                saved_model = os.path.join(staging, "saved_model")
                write_saved_model(network, saved_model)
            export(network, cfg, kind, targets, saved_model, calibration)
            saved_model = targets[0][0] if kind == "saved_model" else saved_model
            written += [(kind, path, quantization) for path, quantization in targets]
    return written


def load_for_export(args):
    """(network, export Config) of --model; ExportError naming what is wrong with it."""
    # The cheap check first: importing model.py starts TensorFlow, which takes seconds.
    if os.path.isfile(args.model) and not zipfile.is_zipfile(args.model):
        raise ExportError(f"{args.model}: not a Keras .keras archive (train.py writes those)")
    import model as model_module

    try:
        network, checkpoint_cfg = model_module.load_checkpoint(args.model)
    except (OSError, ValueError) as error:
        raise ExportError(" ".join(str(error).split())) from None
    except zipfile.BadZipFile as error:  # A damaged member: load_checkpoint lets it through.
        raise ExportError(f"{args.model}: damaged Keras archive ({error})") from None
    return network, export_config(checkpoint_cfg, args)


def run(args):
    """Export and check; returns the exit status (0 or 1). Raises ExportError and friends."""
    check_packages(args)
    plan = planned_artefacts(args)
    check_outputs(args, plan)
    network, cfg = load_for_export(args)
    images, truth = (None, None) if args.no_check else parity_images(args)
    calibration = (calibration_inputs(cfg, args.calibration_images, args.calibration_limit)
                   if wants_int8(args) else None)
    written = export_formats(network, cfg, plan, calibration)
    runs = [(kind, path, quantization, None) for kind, path, quantization in written]
    results = [None] * len(runs)
    if not args.no_check:
        runs = check_runs(written)
        results = check_artefacts(network, cfg, runs, images, truth)
    summary = []
    for (kind, path, quantization, precision), result in zip(runs, results):
        print(describe(path, quantization, result, precision))
        summary.append(dict(result or {}, format=kind, path=path, quantization=quantization,
                            bytes=artefact_size(path), sidecar=runtimes.sidecar_path(path)))
    print(json.dumps({"artefacts": summary}))
    return 0 if all(result is None or result["passed"] for result in results) else 1


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    if args.limit < 1 or args.calibration_limit < 1:
        build_parser().error("--limit and --calibration_limit must be >= 1")
    if args.out and len(set(args.format)) > 1:
        build_parser().error("--out names one artefact: give one --format with it")
    try:
        return run(args)
    except (ExportError, runtimes.RuntimeLoadError, utils.OutputError, ValueError) as error:
        print(f"export.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
