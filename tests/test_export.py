"""Tests of export.py: artefacts of a tiny checkpoint, their sidecars, parity and errors."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

import config
import export
import runtimes
from conftest import sample_images_folder, save_tiny_checkpoint


def keras_maps(checkpoint, batch):
    """(heatmaps, pafs) of the Keras checkpoint on a batch, through model.load_checkpoint."""
    network, _ = runtimes.load(checkpoint)
    return network.run(batch)


def random_batch(height, width, count=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (count, height, width, 3)).astype(np.float32)


def test_onnx_export_has_named_dynamic_outputs_equal_to_keras(tiny_onnx):
    path, checkpoint, _, summary = tiny_onnx
    artefact = summary["artefacts"][0]
    assert artefact["passed"] and artefact["path"] == path
    assert max(artefact["max_abs_heatmaps"], artefact["max_abs_pafs"]) <= 1e-4
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == ["heatmaps", "pafs"]
    assert [item.name for item in session.get_inputs()] == ["image"]
    network, cfg = runtimes.load(path)
    # Two input shapes (multiples of the stride, 4) through one file: the shapes are dynamic.
    for height, width in ((32, 48), (24, 64)):
        batch = random_batch(height, width)
        heatmaps, pafs = network.run(batch)
        expected_heatmaps, expected_pafs = keras_maps(checkpoint, batch)
        assert heatmaps.shape == (2, height // 4, width // 4, config.NUM_HEATMAPS)
        assert pafs.shape == (2, height // 4, width // 4, config.NUM_PAFS)
        assert np.abs(heatmaps - expected_heatmaps).max() <= 1e-4
        assert np.abs(pafs - expected_pafs).max() <= 1e-4


def test_the_sidecar_holds_what_a_runtime_needs_to_parse(tiny_onnx):
    path, checkpoint, _, _ = tiny_onnx
    with open(path + ".json", encoding="utf-8") as handle:
        values = json.load(handle)
    saved = config.load_config(os.path.join(os.path.dirname(checkpoint), "config.json"))
    assert values["stride"] == saved.stride == 4
    assert values["keypoints"] == list(config.JOINT_NAMES)
    assert values["limbs"] == [list(limb) for limb in config.LIMBS]
    assert values["input"]["normalization"] == saved.input_normalization
    assert values["outputs"] == {"heatmaps": config.NUM_HEATMAPS, "pafs": config.NUM_PAFS}
    _, cfg = runtimes.read_sidecar(path)
    assert cfg == saved  # the parser settings of the run's config, unchanged


def test_litert_exports_three_quantizations_within_their_tolerances(tmp_path):
    checkpoint, _ = save_tiny_checkpoint(tmp_path / "run")
    images = sample_images_folder(tmp_path / "images", sizes=((40, 56),))
    status = export.main(["--model", checkpoint, "--format", "litert", "--images", images,
                          "--scales", "1,1.5"])
    assert status == 0
    paths = {quantization: str(tmp_path / "run" / f"best_{quantization}.tflite")
             for quantization in export.LITERT_QUANTIZATIONS}
    sizes = {quantization: os.path.getsize(path) for quantization, path in paths.items()}
    assert sizes["float16"] < sizes["float32"] and sizes["int8"] < sizes["float32"]
    batch = random_batch(32, 40, count=1, seed=3)
    expected = keras_maps(checkpoint, batch)
    for quantization, path in paths.items():
        network, cfg = runtimes.load(path)
        assert cfg.scales == (1, 1.5)  # an inference setting given to export.py is kept
        difference = max(np.abs(got - want).max() for got, want in
                         zip(network.run(batch), expected))
        assert difference <= export.PARITY_TOLERANCE[quantization]
        if quantization == "float32":
            assert difference <= 1e-4


def test_saved_model_export_serves_the_same_maps(tmp_path):
    checkpoint, _ = save_tiny_checkpoint(tmp_path / "run")
    out = str(tmp_path / "exported")
    assert export.main(["--model", checkpoint, "--format", "saved_model", "--out", out,
                        "--no_check"]) == 0
    assert os.path.isfile(os.path.join(out, "saved_model.pb"))
    network, _ = runtimes.load(out)
    batch = random_batch(24, 36)
    for got, want in zip(network.run(batch), keras_maps(checkpoint, batch)):
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


def test_errors_are_one_line_with_status_2(tmp_path, tiny_onnx, capsys, monkeypatch):
    _, checkpoint, _, _ = tiny_onnx
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--model", checkpoint, "--format", "tensorrt"])
    assert exit_info.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(checkpoint, lone / "best.keras")
    assert export.main(["--model", str(lone / "best.keras"), "--format", "onnx"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "config.json: missing" in error

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if it were not installed
    assert export.main(["--model", checkpoint, "--format", "onnx"]) == 2
    assert "pip install tf2onnx" in capsys.readouterr().err

    assert export.main(["--model", checkpoint, "--format", "litert", "--stride", "8"]) == 2
    assert "--stride is fixed by the checkpoint" in capsys.readouterr().err
    assert not [name for name in os.listdir(os.path.dirname(checkpoint))
                if name.endswith(".tflite") or name.startswith(".tmp-")]
