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

# One xdist worker runs this file and test_runtimes.py, which share the exported tiny models.
pytestmark = pytest.mark.xdist_group("exported_models")


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
        # PAF components span -1..1, twice the heatmaps' range: twice the bound.
        assert entry["tolerance_pafs"] == 2 * entry["tolerance"]
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
    assert saved.peak_threshold != 0.07
    assert cfg == dataclasses.replace(saved, peak_threshold=0.07)


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


# --------------------------------------------------------------------------------------------
# OpenVINO
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def openvino_exports(tiny_exports, tmp_path_factory):
    """The tiny checkpoint exported by one export.py run to OpenVINO float32 and int8 (int8
    calibrated on three small random images), parity-checked on tiny_exports' images.

    A dict: summary (export's JSON line), float32 and int8 (paths of the .xml files), folder.
    """
    import contextlib
    import io

    from conftest import sample_images_folder

    root = tmp_path_factory.mktemp("openvino")
    calibration = sample_images_folder(root / "calibration", ((40, 56), (48, 40), (36, 60)))
    folder = root / "model"
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        status = export.main(["--model", tiny_exports["checkpoint"], "--format", "openvino",
                              "--openvino_quantization", "none", "int8", "--calibration_images",
                              calibration, "--out", str(folder / "tiny.xml"),
                              "--images", tiny_exports["images"]])
    assert status == 0, capture.getvalue()
    return {"summary": json.loads(capture.getvalue().strip().splitlines()[-1]),
            "float32": str(folder / "tiny.xml"), "int8": str(folder / "tiny_int8.xml"),
            "folder": str(folder)}


def checked(openvino_exports, quantization, precision="f32"):
    """The parity entry of the OpenVINO export of `quantization` run in `precision` (on a CPU
    with bfloat16 each model is checked in f32 and in bf16)."""
    entries = [entry for entry in openvino_exports["summary"]["artefacts"]
               if (entry["quantization"], entry["precision"]) == (quantization, precision)]
    assert len(entries) == 1
    return entries[0]


def test_openvino_float32_export_equals_keras_at_any_shape(openvino_exports, keras_maps):
    float32 = checked(openvino_exports, "float32")
    assert (float32["format"], float32["quantization"], float32["precision"]) == (
        "openvino", "float32", "f32")
    assert float32["passed"] and max(float32["max_abs_heatmaps"], float32["max_abs_pafs"]) <= 1e-4
    # The .xml and its .bin, their sidecars, and no staging files left behind.
    assert sorted(os.listdir(openvino_exports["folder"])) == [
        "tiny.bin", "tiny.xml", "tiny.xml.json", "tiny_int8.bin", "tiny_int8.xml",
        "tiny_int8.xml.json"]
    values, _ = runtimes.read_sidecar(openvino_exports["float32"])
    assert (values["format"], values["quantization"]) == ("openvino", "float32")
    network, _ = runtimes.load(openvino_exports["float32"])
    assert network.name == "openvino" and network.precision == "f32"
    for height, width, count in ((32, 48, 2), (24, 64, 1), (40, 40, 3)):
        batch = random_batch(height, width, count, seed=height)
        heatmaps, pafs = network.run(batch)
        expected_heatmaps, expected_pafs = keras_maps(batch)
        assert heatmaps.shape == (count, height // 4, width // 4, 15)
        assert pafs.shape == (count, height // 4, width // 4, 30)
        assert np.abs(heatmaps - expected_heatmaps).max() <= 1e-4
        assert np.abs(pafs - expected_pafs).max() <= 1e-4


def test_openvino_int8_export_is_quantised_and_close_to_keras(openvino_exports, keras_maps):
    precisions = {entry["precision"] for entry in openvino_exports["summary"]["artefacts"]}
    assert precisions in ({"f32"}, {"f32", "bf16"})
    int8 = checked(openvino_exports, "int8")
    assert (int8["quantization"], int8["tolerance"]) == ("int8", export.PARITY_TOLERANCE["int8"])
    assert int8["passed"] and 0 < int8["mean_abs"] <= max(int8["max_abs_heatmaps"],
                                                          int8["max_abs_pafs"]) <= 0.3
    assert 0.0 <= int8["agreement_map"] <= 1.0
    with open(openvino_exports["int8"], encoding="utf-8") as handle:
        assert "FakeQuantize" in handle.read()  # activations and weights quantised by NNCF
    network, _ = runtimes.load(openvino_exports["int8"])
    batch = random_batch(32, 56, count=1, seed=5)
    got, expected = network.run(batch), keras_maps(batch)
    assert [maps.shape for maps in got] == [(1, 8, 14, 15), (1, 8, 14, 30)]
    assert 0 < max(np.abs(g - w).max() for g, w in zip(got, expected)) <= 0.3


def one_error_line(capfd):
    """The one line a failed export.py run wrote to stderr (file descriptor 2 included)."""
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export.py: error: "), lines
    return lines[0]


def test_bad_calibration_and_output_paths_are_one_line_and_write_nothing(tiny_exports, tmp_path,
                                                                          capfd):
    checkpoint, images = tiny_exports["checkpoint"], tiny_exports["images"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("not an image")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "a.jpg").write_text("not a JPEG")
    (tmp_path / "a_file").write_text("a file where a folder should be")
    out = tmp_path / "out"
    int8 = ["--model", checkpoint, "--format", "openvino", "--openvino_quantization", "int8",
            "--images", images, "--out", str(out / "m.xml"), "--calibration_images"]
    cases = [
        (int8 + [str(tmp_path / "empty")], "empty: no images (.jpg"),
        (int8 + [str(tmp_path / "text")], "text: no images (.jpg"),
        (int8 + [str(tmp_path / "garbage")], "none of its 1 calibration images can be read"),
        (int8 + [str(tmp_path / "missing")], "missing: no such folder of calibration images"),
        (["--model", checkpoint, "--format", "openvino", "--out", str(out / "m.onnx")],
         "m.onnx: the openvino artefact's name must end in .xml"),
        (["--model", checkpoint, "--format", "onnx", "--calibration_images", images],
         "--calibration_images is only used by --format openvino"),
        # A path under a regular file fails for root too (a read-only folder does not).
        (["--model", checkpoint, "--format", "onnx", "--out", str(tmp_path / "a_file" / "m.onnx")],
         "a_file/m.onnx: cannot write this file"),
        (["--model", checkpoint, "--format", "onnx", "--out", str(out / "m.onnx"), "--images",
          str(tmp_path / "garbage")], "a.jpg: not an image"),  # parity images read first
    ]
    before = sorted(os.listdir(os.path.dirname(checkpoint)))
    for argv, message in cases:
        assert export.main(argv) == 2, argv
        assert message in one_error_line(capfd)
        assert not out.exists()
    assert sorted(os.listdir(os.path.dirname(checkpoint))) == before


def test_a_read_only_output_folder_is_one_line(tiny_exports, tmp_path, capfd, monkeypatch):
    """A folder that refuses new files (EACCES, injected because root writes anywhere) is
    refused before the model is loaded, with nothing left in it."""
    locked = tmp_path / "locked"
    locked.mkdir()

    def refusing_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.samefile(dir, locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_mkstemp(*args, dir=dir, **kwargs)

    real_mkstemp = export.tempfile.mkstemp
    monkeypatch.setattr(export.tempfile, "mkstemp", refusing_mkstemp)
    assert export.main(["--model", tiny_exports["checkpoint"], "--format", "onnx",
                        "--out", str(locked / "m.onnx")]) == 2
    assert "m.onnx: cannot write this file" in one_error_line(capfd)
    assert os.listdir(locked) == []


def damaged_checkpoints(checkpoint, folder):
    """{name: path} of three bad .keras files beside a copy of the run's config.json: a text
    file, the first half of the real archive, and the archive with its weights overwritten."""
    os.makedirs(folder, exist_ok=True)
    shutil.copy(os.path.join(os.path.dirname(checkpoint), "config.json"), folder)
    with open(checkpoint, "rb") as handle:
        data = bytearray(handle.read())
    damaged = bytearray(data)
    # The weights member sits in the middle: zeros there break its CRC, not the zip directory.
    damaged[len(data) // 2:len(data) // 2 + 2000] = bytes(2000)
    contents = {"text.keras": b"not a checkpoint\n", "half.keras": bytes(data[:len(data) // 2]),
                "crc.keras": bytes(damaged)}
    for name, content in contents.items():
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(content)
    return {name: os.path.join(folder, name) for name in contents}


def test_damaged_checkpoints_are_one_line(tiny_exports, tmp_path, capfd):
    paths = damaged_checkpoints(tiny_exports["checkpoint"], str(tmp_path / "bad"))
    expected = {"text.keras": "not a Keras .keras archive",
                "half.keras": "not a Keras .keras archive",
                "crc.keras": "damaged Keras archive (Bad CRC-32"}
    for name, message in expected.items():
        out = tmp_path / "out" / "m.onnx"
        assert export.main(["--model", paths[name], "--format", "onnx", "--out", str(out)]) == 2
        line = one_error_line(capfd)
        assert name in line and message in line and not out.exists()


def test_a_truncated_checkpoint_fails_without_a_traceback(tiny_exports, tmp_path):
    import subprocess

    from conftest import ROOT

    path = damaged_checkpoints(tiny_exports["checkpoint"], str(tmp_path / "bad"))["half.keras"]
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "export.py"), "--model", path, "--format",
         "openvino", "--out", str(tmp_path / "out" / "m.xml")],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"export.py: error: {path}: not a Keras .keras archive (train.py writes "
                      "those)"]
    assert not (tmp_path / "out").exists()
