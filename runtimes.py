"""One interface over the network's formats: a Keras checkpoint, a SavedModel, ONNX and LiteRT.

    network, cfg = runtimes.load("models/cpu/best.onnx")       # or .keras, .tflite, a folder
    heatmaps, pafs = network.run(batch)                         # float32 (N, H, W, 3) RGB 0..255

Every runtime takes a float32 RGB batch (N, H, W, 3) with values 0..255 and H, W multiples of the
stride (the network normalises its input itself), and returns the last stage's maps: heatmaps
(N, H / stride, W / stride, NUM_HEATMAPS) and pafs (N, H / stride, W / stride, NUM_PAFS), float32.
A runtime is also callable as a Keras model is, runtime(batch, training=False) -> (pafs,
heatmaps), the model's last two outputs, so inference.py's multi-scale, flip, batching and
parsing serve every format unchanged.

An exported artefact (export.py) carries its config in a JSON sidecar beside it, PATH + ".json":
stride, keypoint and limb order, input layout and normalisation, and the run's whole config
(parser settings included). Loading an ONNX or LiteRT artefact imports no TensorFlow, so the
inference path runs with requirements-deploy.txt alone (ONNX Runtime, NumPy, OpenCV, SciPy).
"""

from __future__ import annotations

import importlib
import json
import os

import numpy as np

import config

SIDECAR_SUFFIX = ".json"
SIDECAR_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("heatmaps", "pafs")
# The signature every exported artefact serves (SavedModel and LiteRT).
SIGNATURE = "serving_default"
FORMATS = ("keras", "saved_model", "onnx", "litert")


class RuntimeLoadError(ValueError):
    """A model that cannot be loaded; the message is one line naming the file and the fix."""


class MissingPackageError(RuntimeLoadError):
    """A runtime package is not installed; the message names the pip package to install."""


def import_package(module, package, purpose):
    """Import `module`, or raise MissingPackageError saying which pip `package` gives it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackageError(f"{purpose} needs the Python package {package!r}, which is "
                                  f"not installed ({error}); install it with "
                                  f"`pip install {package}`") from None


def default_threads(threads):
    """Threads to ask a runtime for: `threads`, or every CPU core when it is 0 or None."""
    return int(threads) if threads else (os.cpu_count() or 1)


def format_of(path):
    """The format of a model path: keras, saved_model (a folder), onnx or litert."""
    stripped = os.path.normpath(path)
    if os.path.isdir(stripped):
        if os.path.isfile(os.path.join(stripped, "saved_model.pb")):
            return "saved_model"
        return "keras"  # a run folder: model.load_checkpoint finds best.keras in it
    extension = os.path.splitext(stripped)[1].lower()
    formats = {".keras": "keras", ".onnx": "onnx", ".tflite": "litert"}
    if extension not in formats:
        raise RuntimeLoadError(f"{path}: unknown model format; expected a .keras checkpoint, "
                               "a SavedModel folder, an .onnx or a .tflite file")
    return formats[extension]


# --------------------------------------------------------------------------------------------
# The sidecar: what a runtime needs to parse, beside the artefact
# --------------------------------------------------------------------------------------------
def sidecar_path(path):
    """PATH.json beside the artefact (a SavedModel folder's sidecar is FOLDER.json)."""
    return os.path.normpath(path) + SIDECAR_SUFFIX


def sidecar(cfg, artefact_format, quantization="float32"):
    """The sidecar dict of an artefact exported from a model of config `cfg`."""
    return {
        "version": SIDECAR_VERSION,
        "format": artefact_format,
        "quantization": quantization,
        "input": {"name": INPUT_NAME, "layout": "NHWC", "dtype": "float32",
                  "channels": "RGB", "range": [0, 255],
                  "height_and_width": f"any multiples of the stride ({cfg.stride})",
                  "normalization": cfg.input_normalization,
                  "normalization_note": "done inside the network: feed raw RGB 0..255"},
        "outputs": {"heatmaps": config.NUM_HEATMAPS, "pafs": config.NUM_PAFS},
        "stride": cfg.stride,
        "keypoints": list(config.JOINT_NAMES),
        "limbs": [list(limb) for limb in config.LIMBS],
        "background_channel": config.BACKGROUND_CHANNEL,
        "config": cfg.to_dict(),
    }


def read_sidecar(path):
    """(sidecar dict, Config) of an exported artefact; RuntimeLoadError naming the problem."""
    where = sidecar_path(path)
    if not os.path.isfile(where):
        raise RuntimeLoadError(f"{where}: missing; an exported model needs the JSON that "
                               "export.py writes beside it (it holds the stride and parser "
                               "settings)")
    try:
        with open(where, "r", encoding="utf-8") as handle:
            values = json.load(handle)
        cfg = config.config_from_dict(values["config"], where)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RuntimeLoadError(f"{where}: not a usable export sidecar ({error})") from None
    if values.get("version") != SIDECAR_VERSION or values.get("keypoints") != list(
            config.JOINT_NAMES):
        raise RuntimeLoadError(f"{where}: written for another sidecar version or skeleton "
                               f"(version {values.get('version')}, keypoints "
                               f"{values.get('keypoints')})")
    return values, cfg


# --------------------------------------------------------------------------------------------
# Runtimes
# --------------------------------------------------------------------------------------------
class Runtime:
    """A network behind one call; subclasses implement run(batch) -> (heatmaps, pafs).

    name: the runtime's name; threads: CPU threads it was asked to use (0: its default);
    path: what it was loaded from.
    """

    name = "runtime"

    def __init__(self, path, threads=0):
        self.path, self.threads = path, int(threads or 0)

    def run(self, batch):
        raise NotImplementedError

    def __call__(self, batch, training=False):
        """Keras' calling convention: the model's last two outputs, (pafs, heatmaps)."""
        heatmaps, pafs = self.run(np.ascontiguousarray(batch, dtype=np.float32))
        return pafs, heatmaps


class KerasRuntime(Runtime):
    """A Keras model, run through inference.network_function's compiled tf.function."""

    name = "keras"

    def __init__(self, network, path="", threads=0):
        super().__init__(path, threads)
        self.network = network

    def run(self, batch):
        import inference

        outputs = inference.network_function(self.network)(batch)
        return np.asarray(outputs[-1], np.float32), np.asarray(outputs[-2], np.float32)


class SavedModelRuntime(Runtime):
    """A SavedModel folder written by export.py, through TensorFlow's loader."""

    name = "saved_model"

    def __init__(self, path, threads=0):
        super().__init__(path, threads)
        tf = import_package("tensorflow", "tensorflow-cpu", "a SavedModel")
        self.function = tf.saved_model.load(path).signatures[SIGNATURE]
        self.tf = tf

    def run(self, batch):
        outputs = self.function(**{INPUT_NAME: self.tf.constant(batch)})
        return tuple(np.asarray(outputs[name], np.float32) for name in OUTPUT_NAMES)


class OnnxRuntime(Runtime):
    """An .onnx file run by ONNX Runtime's CPU provider (no TensorFlow)."""

    name = "onnxruntime"

    def __init__(self, path, threads=0):
        super().__init__(path, threads)
        ort = import_package("onnxruntime", "onnxruntime", "running an .onnx model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = default_threads(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise RuntimeLoadError(f"{path}: ONNX Runtime cannot load this file "
                                   f"({' '.join(str(error).split())[:200]})") from None
        self.threads = options.intra_op_num_threads
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch):
        heatmaps, pafs = self.session.run(list(OUTPUT_NAMES), {self.input_name: batch})
        return heatmaps, pafs


def litert_interpreter_class():
    """LiteRT's Interpreter: the ai-edge-litert package, else TensorFlow's tf.lite copy."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf
        return tf.lite.Interpreter
    except (ImportError, AttributeError):
        raise MissingPackageError("running a .tflite model needs the Python package "
                                  "'ai-edge-litert' (LiteRT), which is not installed; install "
                                  "it with `pip install ai-edge-litert`") from None


class LiteRtRuntime(Runtime):
    """A .tflite file run by the LiteRT interpreter; inputs of a new shape resize it."""

    name = "litert"

    def __init__(self, path, threads=0):
        super().__init__(path, threads)
        interpreter_class = litert_interpreter_class()
        self.threads = default_threads(threads)
        try:
            self.interpreter = interpreter_class(model_path=path, num_threads=self.threads)
            self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as error:
            raise RuntimeLoadError(f"{path}: LiteRT cannot load this file "
                                   f"({' '.join(str(error).split())[:200]})") from None

    def run(self, batch):
        outputs = self.runner(**{INPUT_NAME: batch})
        return tuple(np.array(outputs[name], np.float32) for name in OUTPUT_NAMES)


EXPORTED_RUNTIMES = {"saved_model": SavedModelRuntime, "onnx": OnnxRuntime,
                     "litert": LiteRtRuntime}


def set_tensorflow_threads(threads):
    """Ask TensorFlow for `threads` intra-op threads (0: leave its default, every core). Only
    possible before TensorFlow starts its thread pools; afterwards this does nothing."""
    if threads:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        except RuntimeError:  # TensorFlow already started: its thread pools are fixed
            pass


def load_keras(path, threads=0):
    """(KerasRuntime, Config) of a checkpoint via model.load_checkpoint (config.json beside)."""
    import model as model_module

    set_tensorflow_threads(threads)
    try:
        network, cfg = model_module.load_checkpoint(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RuntimeLoadError(" ".join(str(error).split())[:400]) from None
    return KerasRuntime(network, path, threads), cfg


def load(path, threads=0):
    """(Runtime, Config) of any model path: a .keras checkpoint or run folder (config.json
    beside it), or an exported SavedModel folder, .onnx or .tflite file (sidecar beside it).

    threads: CPU threads (0: every core; TensorFlow's only change before it starts). Raises
    RuntimeLoadError (MissingPackageError when the runtime's package is not installed) with
    a one-line message, and when the outputs do not have config.py's channel counts.
    """
    if not os.path.exists(path):
        raise RuntimeLoadError(f"{path}: model not found")
    kind = format_of(path)
    if kind == "keras":
        runtime, cfg = load_keras(path, threads)
    else:
        _, cfg = read_sidecar(path)
        runtime = EXPORTED_RUNTIMES[kind](path, threads)
    check_channels(runtime, cfg, path)
    return runtime, cfg


def load_for_inference(path, overrides=None):
    """(Runtime, Config) to run the model at `path` with: load, then its saved config with
    `overrides` ({field: value} from the command line) on top.

    The one way demo.py and evaluate.py load a network. Only inference, video and path
    settings may be overridden (config.inference_config): a ValueError naming another field is
    raised before anything is loaded. runtime_threads, when given, sets the runtime's threads.
    """
    overrides = dict(overrides or {})
    config.inference_config(config.Config(), overrides)  # Fail before the slow load.
    runtime, saved = load(path, overrides.get("runtime_threads", 0))
    return runtime, config.inference_config(saved, overrides)


def check_channels(runtime, cfg, path):
    """RuntimeLoadError unless a small input gives config.py's heatmap and PAF channels."""
    probe = np.full((1, 2 * cfg.stride, 2 * cfg.stride, 3), 128.0, dtype=np.float32)
    heatmaps, pafs = runtime.run(probe)
    if (heatmaps.shape[-1], pafs.shape[-1]) != (config.NUM_HEATMAPS, config.NUM_PAFS):
        raise RuntimeLoadError(f"{path}: the network outputs {heatmaps.shape[-1]} heatmap and "
                               f"{pafs.shape[-1]} PAF channels but config.py's skeleton needs "
                               f"{config.NUM_HEATMAPS} and {config.NUM_PAFS}")
