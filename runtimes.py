"""One interface over the network's formats: a Keras checkpoint, a SavedModel, ONNX, LiteRT and
OpenVINO.

    network, cfg = runtimes.load("models/cpu/best.onnx")       # or .keras, .tflite, .xml, a folder
    heatmaps, pafs = network.run(batch)                         # float32 (N, H, W, 3) RGB 0..255

Every runtime takes a float32 RGB batch (N, H, W, 3) with values 0..255 and H, W multiples of the
stride (the network normalises its input itself), and returns the last stage's maps: heatmaps
(N, H / stride, W / stride, NUM_HEATMAPS) and pafs (N, H / stride, W / stride, NUM_PAFS), float32.
A runtime is also callable as a Keras model is, runtime(batch, training=False) -> (pafs,
heatmaps), the model's last two outputs, so inference.py's multi-scale, flip, batching and
parsing serve every format unchanged.

An exported artefact (export.py) carries its config in a JSON sidecar beside it, PATH + ".json":
stride, keypoint and limb order, input layout and normalisation, and the run's whole config
(parser settings included). Loading an ONNX, OpenVINO or LiteRT artefact imports no TensorFlow,
so the inference path runs with requirements-deploy.txt alone (ONNX Runtime, OpenVINO, NumPy,
OpenCV, SciPy).
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import os
import queue
import re
import threading
import zipfile

import numpy as np

import config

SIDECAR_SUFFIX = ".json"
SIDECAR_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("heatmaps", "pafs")
# The signature every exported artefact serves (SavedModel and LiteRT).
SIGNATURE = "serving_default"
FORMATS = ("keras", "saved_model", "onnx", "litert", "openvino")
# What runtimes.py needs that requirements-deploy.txt installs (the TF-free inference path).
DEPLOY_REQUIREMENTS = "requirements-deploy.txt"
# OpenVINO inference precisions (Config.openvino_precision): f32 always; bf16 where the CPU
# computes bfloat16 (AVX512_BF16 or AMX), else f32; auto is bf16 where possible without a warning.
OPENVINO_PRECISIONS = ("f32", "bf16", "auto")
# Input shapes an OpenVINO runtime keeps a static compilation of (OpenVINORuntime).
STATIC_SHAPES = 8
LOGGER = logging.getLogger(__name__)


class RuntimeLoadError(ValueError):
    """A model that cannot be loaded; the message is one line naming the file and the fix."""


class MissingPackageError(RuntimeLoadError):
    """A runtime package is not installed; the message names the pip package to install."""


def import_package(module, package, purpose, requirements=DEPLOY_REQUIREMENTS):
    """Import `module`, or raise MissingPackageError saying which pip `package` gives it and
    which requirements file of the project lists it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackageError(f"{purpose} needs the Python package {package!r}, which is "
                                  f"not installed ({error}); install it with "
                                  f"`pip install {package}` or `pip install -r "
                                  f"{requirements}`") from None


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
    formats = {".keras": "keras", ".onnx": "onnx", ".tflite": "litert", ".xml": "openvino"}
    if extension not in formats:
        raise RuntimeLoadError(f"{path}: unknown model format; expected a .keras checkpoint, "
                               "a SavedModel folder, an .onnx, a .tflite or an OpenVINO .xml "
                               "file")
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
def check_output_names(path, names):
    """RuntimeLoadError unless a model's outputs `names` include heatmaps and pafs (a model
    that export.py did not write may name them otherwise)."""
    missing = [name for name in OUTPUT_NAMES if name not in names]
    if missing:
        raise RuntimeLoadError(f"{path}: no output named {' or '.join(missing)} (its outputs: "
                               f"{', '.join(sorted(names)) or 'none'}); export.py names the "
                               f"network's outputs {' and '.join(OUTPUT_NAMES)}")


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
    """A Keras model, its forward pass compiled once (inference.CompiledNetwork)."""

    name = "keras"

    def __init__(self, network, path="", threads=0):
        import inference

        super().__init__(path, threads)
        self.network = network
        self.forward = inference.network_function(network)

    def run(self, batch):
        outputs = self.forward(batch)
        return np.asarray(outputs[-1], np.float32), np.asarray(outputs[-2], np.float32)


class SavedModelRuntime(Runtime):
    """A SavedModel folder written by export.py, through TensorFlow's loader."""

    name = "saved_model"

    def __init__(self, path, threads=0):
        super().__init__(path, threads)
        tf = import_package("tensorflow", "tensorflow-cpu", "a SavedModel", "requirements.txt")
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
        check_output_names(path, [output.name for output in self.session.get_outputs()])

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
                                  "it with `pip install ai-edge-litert` (requirements.txt has "
                                  f"it; {DEPLOY_REQUIREMENTS} leaves it out)") from None


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
        signature = self.interpreter.get_signature_list()[SIGNATURE]
        check_output_names(path, signature["outputs"])

    def run(self, batch):
        outputs = self.runner(**{INPUT_NAME: batch})
        return tuple(np.array(outputs[name], np.float32) for name in OUTPUT_NAMES)


def check_openvino_precision(precision):
    """RuntimeLoadError unless `precision` is one of OPENVINO_PRECISIONS."""
    if precision not in OPENVINO_PRECISIONS:
        raise RuntimeLoadError(f"--openvino_precision {precision!r}: choose one of "
                               f"{', '.join(OPENVINO_PRECISIONS)}")


def cpu_has_bf16(core):
    """Whether OpenVINO's CPU plugin computes bfloat16 here (AVX512_BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_hint(requested, has_bf16, path):
    """The INFERENCE_PRECISION_HINT to compile with for a requested precision: f32 unless
    bf16 or auto is asked for and the CPU has bfloat16. Asking for f32 explicitly matters: on
    CPUs with AMX, OpenVINO's own default is bf16."""
    if requested == "f32" or not has_bf16:
        if requested == "bf16":
            LOGGER.warning("%s: this CPU has no bfloat16 (OpenVINO's CPU capabilities lack "
                           "BF16), so OpenVINO runs in f32", path)
        return "f32"
    return "bf16"


def openvino_reason(error):
    """OpenVINO's error message without its source-file prefixes, on one line."""
    text = " ".join(str(error).split())
    return re.sub(r"(Exception from|Check '[^']*' failed at) \S+:\d+:\s*", "", text)[:200]


def read_openvino_model(core, path):
    """The ov.Model of an IR .xml (its weights in the .bin beside it); RuntimeLoadError when
    either file is missing or not OpenVINO's."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    # Checked here because OpenVINO tries every frontend on a file that is not an IR, and its
    # TensorFlow frontend prints parse errors straight to the process's stderr.
    if b"<net" not in head:
        raise RuntimeLoadError(f"{path}: not an OpenVINO IR (.xml without a <net> element)")
    weights = os.path.splitext(path)[0] + ".bin"
    if not os.path.isfile(weights):
        raise RuntimeLoadError(f"{weights}: missing; an OpenVINO .xml needs the .bin of its "
                               "weights beside it (export.py writes both)")
    try:
        return core.read_model(path)
    except RuntimeError as error:
        raise RuntimeLoadError(f"{path}: OpenVINO cannot load this model "
                               f"({openvino_reason(error)})") from None


class OpenVINORuntime(Runtime):
    """An OpenVINO IR (.xml and its .bin) on OpenVINO's CPU plugin (no TensorFlow).

    The model is compiled once with a dynamic input (N, H, W, 3), which runs any shape, and
    again with a static input for each shape seen a second time (the frames of a video, the
    scales of same-sized images), up to STATIC_SHAPES of them, least recently used dropped:
    OpenVINO's CPU kernels are faster on a static shape (docs/benchmarks.md), and a
    compilation takes a fraction of a second, so a shape run once stays on the dynamic model.
    requested_precision: f32, bf16 or auto (as asked); precision: what the compiled model
    computes in ("f32" or "bf16"), read back from OpenVINO, which also says it in one log line.

    streams: how many batches may run at once, from as many threads (OpenVINO's CPU streams;
    the threads are split between them). 1 is latency mode: one batch on every thread. More
    streams pay where one small batch cannot keep the threads busy and the caller has frames
    to overlap (a video pipeline: docs/deployment.md); run is thread-safe either way.
    """

    name = "openvino"

    def __init__(self, path, threads=0, precision="f32", streams=1):
        super().__init__(path, threads)
        check_openvino_precision(precision)
        ov = import_package("openvino", "openvino", "running an OpenVINO .xml model")
        core = ov.Core()
        self.threads, self.requested_precision = default_threads(threads), precision
        self.streams = check_streams(streams, self.threads)
        network = read_openvino_model(core, path)
        self.core, self.network, self.lock = core, network, threading.Lock()
        self.properties = {"INFERENCE_NUM_THREADS": self.threads,
                           "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT",
                           "NUM_STREAMS": self.streams,
                           "INFERENCE_PRECISION_HINT": openvino_hint(
                               precision, cpu_has_bf16(core), path)}
        compiled, self.dynamic = self.compile((-1, -1, -1, 3))
        check_output_names(path, [name for output in compiled.outputs
                                  for name in output.get_names()])
        # What the compiled model computes in: OpenVINO falls back to f32 by itself.
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.seen, self.static = set(), collections.OrderedDict()
        LOGGER.info("%s: OpenVINO runs in %s on %d threads, %d stream(s) (asked for %s)", path,
                    self.precision, self.threads, self.streams, precision)

    def compile(self, shape):
        """(compiled model, (queue of `streams` infer requests, outputs in OUTPUT_NAMES
        order)) of the network with input `shape` (-1: any size)."""
        try:
            self.network.reshape(list(shape))
            compiled = self.core.compile_model(self.network, "CPU", self.properties)
        except RuntimeError as error:
            raise RuntimeLoadError(f"{self.path}: OpenVINO cannot run this model "
                                   f"({openvino_reason(error)})") from None
        names = {name for output in compiled.outputs for name in output.get_names()}
        outputs = [compiled.output(name) for name in OUTPUT_NAMES if name in names]
        requests = queue.Queue()
        for _ in range(self.streams):
            requests.put(compiled.create_infer_request())
        return compiled, (requests, outputs)

    def request_for(self, shape):
        """The (requests, outputs) to run a batch of `shape` with: a static model's once the
        shape has been seen before, else the dynamic one's."""
        with self.lock:
            if shape in self.static:
                self.static.move_to_end(shape)
                return self.static[shape]
            if shape not in self.seen:
                self.seen.add(shape)
                return self.dynamic
            self.static[shape] = self.compile(shape)[1]
            if len(self.static) > STATIC_SHAPES:
                self.static.popitem(last=False)
            return self.static[shape]

    def run(self, batch):
        requests, outputs = self.request_for(tuple(batch.shape))
        request = requests.get()  # Waits while every stream is busy.
        try:
            request.infer({0: batch})
            # Copies: the request reuses its output buffers on the next call.
            return tuple(np.array(request.get_tensor(output).data, np.float32)
                         for output in outputs)
        finally:
            requests.put(request)


def check_streams(streams, threads):
    """`streams` as an int from 1 to `threads` (each stream needs a thread).

    Raises RuntimeLoadError for any other count.
    """
    streams = int(streams)
    if not 1 <= streams <= max(threads, 1):
        raise RuntimeLoadError(f"OpenVINO streams must be from 1 to the {threads} runtime "
                               f"thread(s), got {streams}")
    return streams


EXPORTED_RUNTIMES = {"saved_model": SavedModelRuntime, "onnx": OnnxRuntime,
                     "litert": LiteRtRuntime, "openvino": OpenVINORuntime}


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
    except zipfile.BadZipFile as error:  # A damaged member: load_checkpoint lets it through.
        raise RuntimeLoadError(f"{path}: damaged Keras archive ({error})") from None
    return KerasRuntime(network, path, threads), cfg


def load(path, threads=0, precision=None, streams=1):
    """(Runtime, Config) of any model path: a .keras checkpoint or run folder (config.json
    beside it), or an exported SavedModel folder, .onnx, .tflite or OpenVINO .xml file
    (sidecar beside it).

    threads: CPU threads (0: every core; TensorFlow's only change before it starts).
    precision: OpenVINO's inference precision, f32 | bf16 | auto (None: the sidecar config's
    openvino_precision); other runtimes ignore it. streams: batches OpenVINO may run at once
    (OpenVINORuntime); other runtimes run one at a time. Raises RuntimeLoadError
    (MissingPackageError when the runtime's package is not installed) with a one-line
    message, and when the outputs do not have config.py's channel counts.
    """
    if precision is not None:
        check_openvino_precision(precision)
    if not os.path.exists(path):
        raise RuntimeLoadError(f"{path}: model not found")
    kind = format_of(path)
    if kind == "keras":
        runtime, cfg = load_keras(path, threads)
    elif kind == "openvino":
        _, cfg = read_sidecar(path)
        runtime = OpenVINORuntime(path, threads, precision or cfg.openvino_precision, streams)
    else:
        _, cfg = read_sidecar(path)
        runtime = EXPORTED_RUNTIMES[kind](path, threads)
    if kind != "openvino" and int(streams) != 1:
        LOGGER.warning("%s: streams are OpenVINO's; %s runs one batch at a time", path,
                       runtime.name)
    check_channels(runtime, cfg, path)
    return runtime, cfg


def load_for_inference(path, overrides=None):
    """(Runtime, Config) to run the model at `path` with: load, then its saved config with
    `overrides` ({field: value} from the command line) on top.

    The one way demo.py and evaluate.py load a network. Only inference, video and path
    settings may be overridden (config.inference_config): a ValueError naming another field is
    raised before anything is loaded. runtime_threads, when given, sets the runtime's threads;
    openvino_precision, OpenVINO's precision; runtime_streams, OpenVINO's streams.
    """
    overrides = dict(overrides or {})
    config.inference_config(config.Config(), overrides)  # Fail before the slow load.
    runtime, saved = load(path, overrides.get("runtime_threads", 0),
                          overrides.get("openvino_precision"),
                          overrides.get("runtime_streams", 1))
    return runtime, config.inference_config(saved, overrides)


def check_channels(runtime, cfg, path):
    """RuntimeLoadError unless a small input gives config.py's heatmap and PAF channels."""
    probe = np.full((1, 2 * cfg.stride, 2 * cfg.stride, 3), 128.0, dtype=np.float32)
    heatmaps, pafs = runtime.run(probe)
    if (heatmaps.shape[-1], pafs.shape[-1]) != (config.NUM_HEATMAPS, config.NUM_PAFS):
        raise RuntimeLoadError(f"{path}: the network outputs {heatmaps.shape[-1]} heatmap and "
                               f"{pafs.shape[-1]} PAF channels but config.py's skeleton needs "
                               f"{config.NUM_HEATMAPS} and {config.NUM_PAFS}")
