"""Tests of export.py: artefacts of a tiny checkpoint, their sidecars, parity and errors."""

import dataclasses
import json
import os
import shutil
import sys

import numpy as np
import pytest

import config
import export
import runtimes


@pytest.fixture(scope="module")
def keras_maps(tiny_exports):
    """fn(batch) -> (heatmaps, pafs) of the exported Keras checkpoint (loaded once)."""
    network, _ = runtimes.load(tiny_exports["checkpoint"])
    return network.run


def random_batch(height, width, count=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (count, height, width, 3)).astype(np.float32)


def test_every_artefact_passes_the_built_in_parity_check(tiny_exports):
    artefacts = tiny_exports["summary"]["artefacts"]
    assert [(entry["format"], entry["quantization"]) for entry in artefacts] == [
        ("saved_model", "float32"), ("onnx", "float32"), ("litert", "float32"),
        ("litert", "float16"), ("litert", "int8")]
    for entry in artefacts:
        assert entry["passed"] and entry["tolerance"] == export.PARITY_TOLERANCE[
            entry["quantization"]]
        worst = max(entry["max_abs_heatmaps"], entry["max_abs_pafs"])
        assert worst <= entry["tolerance"] and entry["mean_abs"] <= worst
        assert entry["people_artefact"] >= 0 and 0.0 <= entry["agreement_map"] <= 1.0
        assert os.path.exists(entry["path"]) and os.path.isfile(entry["sidecar"])


def test_onnx_export_has_named_dynamic_outputs_equal_to_keras(tiny_exports, keras_maps):
    import onnxruntime

    path = tiny_exports["onnx"]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["heatmaps", "pafs"]
    assert [item.name for item in session.get_inputs()] == ["image"]
    network, _ = runtimes.load(path)
    # Two input shapes (multiples of the stride, 4) through one file: the shapes are dynamic.
    for height, width in ((32, 48), (24, 64)):
        batch = random_batch(height, width)
        heatmaps, pafs = network.run(batch)
        expected_heatmaps, expected_pafs = keras_maps(batch)
        assert heatmaps.shape == (2, height // 4, width // 4, config.NUM_HEATMAPS)
        assert pafs.shape == (2, height // 4, width // 4, config.NUM_PAFS)
        assert np.abs(heatmaps - expected_heatmaps).max() <= 1e-4
        assert np.abs(pafs - expected_pafs).max() <= 1e-4


def test_the_sidecar_holds_what_a_runtime_needs_to_parse(tiny_exports):
    path, checkpoint = tiny_exports["onnx"], tiny_exports["checkpoint"]
    with open(path + ".json", encoding="utf-8") as handle:
        values = json.load(handle)
    saved = config.load_config(os.path.join(os.path.dirname(checkpoint), "config.json"))
    assert values["stride"] == saved.stride == 4
    assert values["keypoints"] == list(config.JOINT_NAMES)
    assert values["limbs"] == [list(limb) for limb in config.LIMBS]
    assert values["input"]["normalization"] == saved.input_normalization
    assert values["outputs"] == {"heatmaps": config.NUM_HEATMAPS, "pafs": config.NUM_PAFS}
    _, cfg = runtimes.read_sidecar(path)
    # The run's config with the inference setting given to export.py on top.
    assert saved.peak_threshold != 0.05
    assert cfg == dataclasses.replace(saved, peak_threshold=0.05)


def test_litert_files_shrink_with_quantization_and_run_any_shape(tiny_exports, keras_maps):
    paths = tiny_exports["litert"]
    sizes = {quantization: os.path.getsize(path) for quantization, path in paths.items()}
    assert sizes["float16"] < sizes["float32"] and sizes["int8"] < sizes["float32"]
    networks = {quantization: runtimes.load(path)[0] for quantization, path in paths.items()}
    for height, width in ((32, 40), (16, 72)):
        batch = random_batch(height, width, count=1, seed=3)
        expected = keras_maps(batch)
        for quantization, network in networks.items():
            got = network.run(batch)
            assert got[0].shape == (1, height // 4, width // 4, config.NUM_HEATMAPS)
            difference = max(np.abs(g - w).max() for g, w in zip(got, expected))
            assert difference <= export.PARITY_TOLERANCE[quantization]


def test_saved_model_export_serves_the_same_maps(tiny_exports, keras_maps):
    folder = tiny_exports["saved_model"]
    assert os.path.isfile(os.path.join(folder, "saved_model.pb"))
    network, _ = runtimes.load(folder)
    batch = random_batch(24, 36)
    for got, want in zip(network.run(batch), keras_maps(batch)):
        assert np.abs(got - want).max() <= 1e-4


def test_parity_compares_people_with_the_official_metric():
    person = np.zeros((14, 3))
    person[:, 0], person[:, 1], person[:, 2] = np.arange(14) * 5 + 10, np.arange(14) * 9 + 5, 1
    person[8] = 0
    entries = [{"image_id": "a", "keypoint_annotations": {"human1": person.ravel().tolist()}}]
    references = export.as_references(entries)
    human = references[0]["keypoint_annotations"]["human1"]
    assert human[24:27] == [0, 0, config.UNLABELLED]  # the missing right ankle
    # The box spans the found joints: x 10..75 and y 5..122 (joint 13 at 10 + 65, 5 + 117).
    assert references[0]["human_annotations"]["human1"] == [10.0, 5.0, 75.0, 122.0]
    from aic_metric import aic_map

    assert aic_map(entries, references)["score"] == 1.0


def test_errors_are_one_line_with_status_2(tmp_path, tiny_exports, capsys, monkeypatch):
    checkpoint = tiny_exports["checkpoint"]
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--model", checkpoint, "--format", "tensorrt"])
    assert exit_info.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.main(["--model", checkpoint, "--format", "onnx", "litert", "--out", "x.onnx"])
    assert "--out names one artefact" in capsys.readouterr().err

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(checkpoint, lone / "best.keras")
    assert export.main(["--model", str(lone / "best.keras"), "--format", "onnx"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "config.json: missing" in error

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if it were not installed
    assert export.main(["--model", checkpoint, "--format", "onnx"]) == 2
    assert "pip install tf2onnx" in capsys.readouterr().err

    before = sorted(os.listdir(os.path.dirname(checkpoint)))
    assert export.main(["--model", checkpoint, "--format", "litert", "--stride", "8"]) == 2
    assert "--stride is fixed by the checkpoint" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.dirname(checkpoint))) == before  # nothing written
