"""Tests of runtimes.py: formats, errors, and the ONNX path run with TensorFlow hidden."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import demo
import evaluate
import runtimes
from conftest import ROOT


def test_format_of_paths(tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "run").mkdir()
    assert runtimes.format_of(str(tmp_path / "saved")) == "saved_model"
    assert runtimes.format_of(str(tmp_path / "saved") + "/") == "saved_model"
    assert runtimes.format_of(str(tmp_path / "run")) == "keras"
    assert runtimes.format_of("m.ONNX") == "onnx" and runtimes.format_of("m.tflite") == "litert"
    with pytest.raises(runtimes.RuntimeLoadError, match="unknown model format"):
        runtimes.format_of("model.pt")
    assert runtimes.sidecar_path(str(tmp_path / "saved") + "/") == str(tmp_path / "saved.json")


def test_a_missing_runtime_package_names_what_to_install(tiny_exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(runtimes.MissingPackageError, match="pip install onnxruntime"):
        runtimes.load(tiny_exports["onnx"])
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(runtimes.MissingPackageError, match="pip install ai-edge-litert"):
        runtimes.litert_interpreter_class()


def test_an_export_without_its_sidecar_is_refused(tiny_exports, tmp_path, capsys):
    lone = tmp_path / "lone.onnx"
    shutil.copy(tiny_exports["onnx"], lone)
    with pytest.raises(runtimes.RuntimeLoadError, match="lone.onnx.json: missing"):
        runtimes.load(str(lone))
    assert demo.main(["--model", str(lone), "--image", tiny_exports["images"]]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "export.py writes beside it" in error


def test_demo_and_evaluate_give_the_keras_predictions_from_onnx(tiny_exports, tmp_path):
    onnx_path, checkpoint = tiny_exports["onnx"], tiny_exports["checkpoint"]
    images = tiny_exports["images"]
    outputs = {}
    for name, model_path in (("keras", checkpoint), ("onnx", onnx_path)):
        out = tmp_path / f"{name}.json"
        assert evaluate.main(["--model", model_path, "--images", images, "--out", str(out),
                              "--no_progress", "--peak_threshold", "0.0"]) == 0
        outputs[name] = json.loads(out.read_text())
    assert [entry["image_id"] for entry in outputs["onnx"]] == ["sample0", "sample1"]
    for keras_entry, onnx_entry in zip(outputs["keras"], outputs["onnx"]):
        assert keras_entry["keypoint_annotations"].keys() == \
            onnx_entry["keypoint_annotations"].keys()
        for name, values in keras_entry["keypoint_annotations"].items():
            assert np.allclose(values, onnx_entry["keypoint_annotations"][name], atol=0.02)


# A subprocess in which `import tensorflow` (and keras, tf2onnx) fails, as where only
# requirements-deploy.txt is installed; it runs the ONNX path of demo.py and runtimes.py.
HIDDEN_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, json, sys
    import numpy as np

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tf2onnx"):
                raise ImportError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, Hide())
    onnx_path, images, out, maps_out = sys.argv[1:5]
    import demo, runtimes
    status = demo.main(["--model", onnx_path, "--image", images, "--json", out,
                        "--output", images + "_drawn"])
    network, cfg = runtimes.load(onnx_path)
    batch = np.random.default_rng(0).uniform(0, 255, (2, 32, 48, 3)).astype(np.float32)
    heatmaps, pafs = network.run(batch)
    np.savez(maps_out, heatmaps=heatmaps, pafs=pafs, batch=batch)
    loaded = sorted(name for name in sys.modules
                    if name.split(".")[0] in ("tensorflow", "keras"))
    print(json.dumps({"status": status, "loaded": loaded}))
""")


def test_the_onnx_path_runs_with_tensorflow_hidden(tiny_exports, tmp_path):
    onnx_path, checkpoint = tiny_exports["onnx"], tiny_exports["checkpoint"]
    images = tiny_exports["images"]
    out, maps_out = tmp_path / "people.json", tmp_path / "maps.npz"
    completed = subprocess.run(
        [sys.executable, "-c", HIDDEN_TENSORFLOW, onnx_path, images, str(out), str(maps_out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"status": 0, "loaded": []}
    assert [entry["image_id"] for entry in json.loads(out.read_text())] == ["sample0",
                                                                           "sample1"]
    assert sorted(os.listdir(images + "_drawn")) == ["sample0_pose.jpg", "sample1_pose.jpg"]
    maps = np.load(maps_out)
    network, _ = runtimes.load(checkpoint)
    heatmaps, pafs = network.run(maps["batch"])
    assert np.abs(maps["heatmaps"] - heatmaps).max() <= 1e-4
    assert np.abs(maps["pafs"] - pafs).max() <= 1e-4


def test_load_for_inference_puts_inference_settings_on_the_checkpoints_config(tmp_path,
                                                                              monkeypatch):
    import dataclasses

    import model
    from test_model import saved_run, tiny_config

    cfg = tiny_config(batch_norm=True)
    network = saved_run(tmp_path / "run", cfg)
    loaded, loaded_cfg = runtimes.load_for_inference(str(tmp_path / "run"),
                                                     {"scales": (1, 2), "track_max_missed": 2})
    assert loaded_cfg == dataclasses.replace(cfg, scales=(1, 2), track_max_missed=2)
    for mine, theirs in zip(network.get_weights(), loaded.network.get_weights()):
        np.testing.assert_array_equal(mine, theirs)

    def no_loading(path):
        raise AssertionError("loaded before the settings were checked")
    monkeypatch.setattr(model, "load_checkpoint", no_loading)
    with pytest.raises(ValueError, match="--batch_norm is fixed by the checkpoint"):
        runtimes.load_for_inference(str(tmp_path / "run"), {"batch_norm": False})
