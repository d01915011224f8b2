"""Test set-up: the repo root on sys.path, quiet TensorFlow, and no accidental downloads."""

import contextlib
import importlib.util
import io
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def load_pre_process():
    """pre-process.py has a hyphen in its name, so the tests import it from its path."""
    if "pre_process" in sys.modules:
        return sys.modules["pre_process"]
    spec = importlib.util.spec_from_file_location("pre_process",
                                                  os.path.join(ROOT, "pre-process.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["pre_process"] = module  # dataclasses look their module up here.
    spec.loader.exec_module(module)
    return module


def load_benchmark(monkeypatch, name):
    """benchmarks/<name>.py as a module; it imports its siblings (common.py, other benchmarks)
    as it does when run as a script, so benchmarks/ goes on sys.path for the test."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location(name,
                                                  os.path.join(ROOT, "benchmarks", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SimulatedKill(BaseException):
    """Stands for SIGKILL: no `except Exception` of the code under test catches it."""


def kill_after_renames(patch, count):
    """Make the `count`-th os.rename or os.replace from now on the last thing the process does."""
    calls = []

    def counting(real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            calls.append(args)
            if len(calls) == count:
                raise SimulatedKill
            return result
        return call

    patch.setattr(os, "rename", counting(os.rename))
    patch.setattr(os, "replace", counting(os.replace))


def save_tiny_checkpoint(folder, **overrides):
    """A randomly initialised `tiny` network saved as train.py saves one: folder/best.keras with
    the run's config.json beside it. Returns (path of best.keras, Config)."""
    import config
    import model

    os.makedirs(folder, exist_ok=True)
    cfg = config.make_config("tiny", **overrides)
    path = os.path.join(str(folder), "best.keras")
    model.build_model(cfg).save(path)
    config.save_config(cfg, os.path.join(str(folder), "config.json"))
    return path, cfg


def sample_images_folder(folder, sizes=((40, 56), (48, 40))):
    """A folder of random RGB JPEG images of the given (height, width) sizes; returns it."""
    import cv2
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(7)
    for index, (height, width) in enumerate(sizes):
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        assert cv2.imwrite(os.path.join(str(folder), f"sample{index}.jpg"), image)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """A tiny checkpoint exported by export.py to every format in one command, its parity check
    run on two small random images, with --peak_threshold 0.07 given (an inference setting).

    A dict: checkpoint, images (folder), summary (export's JSON line), onnx, saved_model (paths)
    and litert ({quantization: path}).
    """
    import json

    import export

    root = tmp_path_factory.mktemp("export")
    checkpoint, _ = save_tiny_checkpoint(root / "run")
    images = sample_images_folder(root / "images")
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        status = export.main(["--model", checkpoint, "--format", "onnx", "saved_model",
                              "litert", "--images", images, "--peak_threshold", "0.07"])
    assert status == 0, capture.getvalue()
    run = root / "run"
    return {"checkpoint": checkpoint, "images": images,
            "summary": json.loads(capture.getvalue().strip().splitlines()[-1]),
            "onnx": str(run / "best.onnx"), "saved_model": str(run / "best_saved_model"),
            "litert": {quantization: str(run / f"best_{quantization}.tflite")
                       for quantization in export.LITERT_QUANTIZATIONS}}
