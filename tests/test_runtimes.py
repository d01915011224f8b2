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

# One xdist worker runs this file and test_export.py, which share the exported tiny models.
pytestmark = pytest.mark.xdist_group("exported_models")


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
    with pytest.raises(runtimes.MissingPackageError, match="pip install onnxruntime") as error:
        runtimes.load(tiny_exports["onnx"])
    assert "pip install -r requirements-deploy.txt" in str(error.value)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(runtimes.MissingPackageError, match="pip install ai-edge-litert") as error:
        runtimes.litert_interpreter_class()
    assert "requirements-deploy.txt leaves it out" in str(error.value)


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


# --------------------------------------------------------------------------------------------
# OpenVINO, and models that are damaged or not the network's
# --------------------------------------------------------------------------------------------
def openvino_copy(source, path):
    """An OpenVINO IR at `path` of an exported .onnx model (OpenVINO reads ONNX directly:
    no TensorFlow needed), with the ONNX model's sidecar marked as OpenVINO's."""
    import openvino

    openvino.save_model(openvino.convert_model(source), path, compress_to_fp16=False)
    with open(source + ".json", encoding="utf-8") as handle:
        values = json.load(handle)
    with open(path + ".json", "w", encoding="utf-8") as handle:
        json.dump(dict(values, format="openvino"), handle)
    return path


@pytest.fixture(scope="module")
def tiny_openvino(tiny_exports, tmp_path_factory):
    """Path of the tiny model as an OpenVINO IR (.xml, .bin and sidecar)."""
    folder = tmp_path_factory.mktemp("openvino")
    return openvino_copy(tiny_exports["onnx"], str(folder / "tiny.xml"))


def test_openvino_runs_any_input_shape_as_onnx_runtime_does(tiny_exports, tiny_openvino):
    network, cfg = runtimes.load(tiny_openvino, threads=1)
    reference, _ = runtimes.load(tiny_exports["onnx"])
    assert (network.name, network.threads, cfg.stride) == ("openvino", 1, 4)
    rng = np.random.default_rng(1)
    for count, height, width in ((1, 32, 48), (2, 24, 64), (1, 16, 16), (3, 32, 48)):
        batch = rng.uniform(0, 255, (count, height, width, 3)).astype(np.float32)
        for got, want in zip(network.run(batch), reference.run(batch)):
            assert got.shape == want.shape == (count, height // 4, width // 4, got.shape[-1])
            assert np.abs(got - want).max() <= 1e-4


def test_openvino_compiles_a_static_shape_once_seen_twice_and_keeps_a_few(tiny_exports,
                                                                         tiny_openvino,
                                                                         monkeypatch):
    monkeypatch.setattr(runtimes, "STATIC_SHAPES", 2)
    network, _ = runtimes.load(tiny_openvino, threads=1)
    reference, _ = runtimes.load(tiny_exports["onnx"])
    rng = np.random.default_rng(2)
    shapes = [(1, 32, 48, 3), (1, 32, 48, 3), (1, 32, 48, 3), (1, 16, 16, 3), (1, 16, 16, 3),
              (1, 24, 64, 3), (1, 24, 64, 3)]
    static_counts = []
    for shape in shapes:
        batch = rng.uniform(0, 255, shape).astype(np.float32)
        for got, want in zip(network.run(batch), reference.run(batch)):
            assert np.abs(got - want).max() <= 1e-4  # the static model gives the same maps
        static_counts.append(len(network.static))
    # The first sighting runs on the dynamic model, the second compiles a static one; with
    # room for two, the least recently used (32x48) is dropped for 24x64.
    assert static_counts == [0, 1, 1, 1, 2, 2, 2]
    assert list(network.static) == [(1, 16, 16, 3), (1, 24, 64, 3)]


def test_openvino_streams_run_batches_from_threads_at_once_with_the_same_maps(tiny_exports,
                                                                             tiny_openvino):
    import concurrent.futures

    network, _ = runtimes.load(tiny_openvino, threads=2, streams=2)
    reference, _ = runtimes.load(tiny_exports["onnx"])
    assert network.streams == 2 and network.properties["PERFORMANCE_HINT"] == "THROUGHPUT"
    rng = np.random.default_rng(3)
    batches = [rng.uniform(0, 255, (1, 32, 48, 3)).astype(np.float32) for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # more callers than streams
        results = list(pool.map(network.run, batches))
    # Each caller gets its own batch's maps, though two requests ran at once.
    for batch, got in zip(batches, results):
        for got_map, want_map in zip(got, reference.run(batch)):
            assert np.abs(got_map - want_map).max() <= 1e-4
    assert network.static[(1, 32, 48, 3)][0].qsize() == 2  # every request handed back
    with pytest.raises(runtimes.RuntimeLoadError,
                       match="streams must be from 1 to the 2 runtime thread.s., got 3"):
        runtimes.load(tiny_openvino, threads=2, streams=3)


def test_runtime_streams_reach_openvino_and_other_runtimes_say_they_run_one(
        tiny_exports, tiny_openvino, caplog):
    network, cfg = runtimes.load_for_inference(tiny_openvino, {"runtime_threads": 2,
                                                              "runtime_streams": 2})
    assert (network.streams, cfg.runtime_streams) == (2, 2)
    with caplog.at_level("WARNING", logger="runtimes"):
        network, _ = runtimes.load_for_inference(tiny_exports["onnx"], {"runtime_streams": 2})
    assert not hasattr(network, "streams")
    assert "streams are OpenVINO's; onnxruntime runs one batch at a time" in caplog.text


def test_openvino_precision_option_says_which_precision_ran(tiny_openvino, monkeypatch,
                                                             caplog):
    import openvino

    has_bf16 = runtimes.cpu_has_bf16(openvino.Core())
    with caplog.at_level("INFO", logger="runtimes"):
        for requested, expected in (("f32", "f32"), ("bf16", "bf16" if has_bf16 else "f32"),
                                    ("auto", "bf16" if has_bf16 else "f32")):
            caplog.clear()
            network, _ = runtimes.load(tiny_openvino, precision=requested)
            assert (network.requested_precision, network.precision) == (requested, expected)
            assert f"OpenVINO runs in {expected} on" in caplog.text
            if requested == "bf16" and not has_bf16:
                assert "this CPU has no bfloat16" in caplog.text
    # The sidecar's config gives the default (export.py stores f32 unless told otherwise).
    assert runtimes.load(tiny_openvino)[0].requested_precision == "f32"
    # bf16 and auto ask for bf16 only where the CPU has it; f32 is asked for explicitly,
    # since OpenVINO's own default on AMX CPUs is bf16.
    assert [runtimes.openvino_hint(name, True, "m.xml") for name in ("f32", "bf16", "auto")] \
        == ["f32", "bf16", "bf16"]
    assert {runtimes.openvino_hint(name, False, "m.xml") for name in ("bf16", "auto")} == {"f32"}
    # On a CPU that claims bfloat16 the runtime reports what OpenVINO compiled, not the request.
    monkeypatch.setattr(runtimes, "cpu_has_bf16", lambda core: True)
    network, _ = runtimes.load(tiny_openvino, precision="bf16")
    assert network.precision == ("bf16" if has_bf16 else "f32")
    with pytest.raises(runtimes.RuntimeLoadError, match="--openvino_precision 'fp8': choose"):
        runtimes.load(tiny_openvino, precision="fp8")


def damaged_copies(sources, folder):
    """{kind: path} of damaged models, each with its source's sidecar: the first half of the
    .onnx, .tflite, .xml (its .bin whole) and .bin (its .xml whole), a text file named .xml, and
    an .xml without its .bin."""
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(sources["xml"])[0]

    def copy(source, name, halved):
        with open(source, "rb") as handle:
            data = handle.read()
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data[:len(data) // 2] if halved else data)

    layout = {"onnx": [(sources["onnx"], "half.onnx", True)],
              "tflite": [(sources["tflite"], "half.tflite", True)],
              "half_xml": [(stem + ".xml", "half_xml.xml", True),
                           (stem + ".bin", "half_xml.bin", False)],
              "half_bin": [(stem + ".xml", "half_bin.xml", False),
                           (stem + ".bin", "half_bin.bin", True)],
              "no_bin": [(stem + ".xml", "no_bin.xml", False)]}
    paths = {}
    for kind, files in layout.items():
        for source, name, halved in files:
            copy(source, name, halved)
        paths[kind] = os.path.join(folder, files[0][1])
        shutil.copy(files[0][0] + ".json", paths[kind] + ".json")
    paths["text_xml"] = os.path.join(folder, "text.xml")
    with open(paths["text_xml"], "w", encoding="utf-8") as handle:
        handle.write("not a model\n")
    shutil.copy(sources["xml"] + ".json", paths["text_xml"] + ".json")
    return paths


def test_damaged_models_are_refused_in_one_line(tiny_exports, tiny_openvino, tmp_path):
    paths = damaged_copies({"onnx": tiny_exports["onnx"], "tflite":
                            tiny_exports["litert"]["float32"], "xml": tiny_openvino},
                           str(tmp_path))
    expected = {"onnx": "ONNX Runtime cannot load this file", "tflite": "LiteRT cannot load",
                "half_xml": "OpenVINO cannot load this model",
                "half_bin": "OpenVINO cannot load this model (Incorrect weights in bin file",
                "no_bin": "no_bin.bin: missing", "text_xml": "not an OpenVINO IR"}
    for kind, message in expected.items():
        with pytest.raises(runtimes.RuntimeLoadError) as error:
            runtimes.load(paths[kind])
        text = str(error.value)
        assert message in text and len(text.splitlines()) == 1, text
        assert os.path.splitext(os.path.basename(paths[kind]))[0] in text


def pooled_onnx(path, channels, names=runtimes.OUTPUT_NAMES, sidecar=None):
    """A small ONNX model (no TensorFlow needed): the NHWC image average-pooled by the stride
    4, then a 1x1 convolution per output, `channels` wide, named `names`; `sidecar` copied."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[4, 4],
                              strides=[4, 4])]
    weights = []
    for name, width in zip(names, channels):
        weights.append(numpy_helper.from_array(np.full((width, 3, 1, 1), 0.01, np.float32),
                                               name + "_weights"))
        nodes += [helper.make_node("Conv", ["pooled", name + "_weights"], [name + "_nchw"]),
                  helper.make_node("Transpose", [name + "_nchw"], [name], perm=[0, 2, 3, 1])]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", "h", "w", 3])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names]
    graph = helper.make_graph(nodes, "pooled", [image], outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # What the installed ONNX Runtime reads.
    onnx.save(model, path)
    shutil.copy(sidecar, path + ".json")
    return path


def test_models_that_are_not_the_networks_are_refused(tiny_exports, tmp_path):
    sidecar = tiny_exports["onnx"] + ".json"
    wrong_width = pooled_onnx(str(tmp_path / "wide.onnx"), (5, 7), sidecar=sidecar)
    wrong_names = pooled_onnx(str(tmp_path / "names.onnx"), (15, 30), ("a", "b"), sidecar)
    right = pooled_onnx(str(tmp_path / "right.onnx"), (15, 30), sidecar=sidecar)
    for source in (wrong_width, wrong_names, right):
        openvino_copy(source, source[:-len(".onnx")] + ".xml")
    assert runtimes.load(right)[0].run(np.zeros((1, 8, 8, 3), np.float32))[0].shape == (
        1, 2, 2, 15)
    assert runtimes.load(str(tmp_path / "right.xml"))[0].name == "openvino"
    for extension in (".onnx", ".xml"):
        with pytest.raises(runtimes.RuntimeLoadError, match="outputs 5 heatmap and 7 PAF "
                           "channels but config.py's skeleton needs 15 and 30"):
            runtimes.load(str(tmp_path / "wide") + extension)
        with pytest.raises(runtimes.RuntimeLoadError, match=r"no output named heatmaps or pafs "
                           r"\(its outputs: a, b\)"):
            runtimes.load(str(tmp_path / "names") + extension)


def test_a_missing_openvino_names_requirements_deploy(tiny_openvino, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(runtimes.MissingPackageError) as error:
        runtimes.load(tiny_openvino)
    assert str(error.value).endswith("install it with `pip install openvino` or `pip install "
                                     "-r requirements-deploy.txt`")


# A subprocess in which TensorFlow cannot be imported (requirements-deploy.txt alone): the
# OpenVINO model runs, and demo.py refuses a damaged one with one line and status 2.
HIDDEN_TENSORFLOW_OPENVINO = textwrap.dedent("""
    import importlib.abc, json, sys
    import numpy as np

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tf2onnx"):
                raise ImportError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, Hide())
    good, damaged, images = sys.argv[1:4]
    import demo, runtimes
    network, _ = runtimes.load(good)
    heatmaps, pafs = network.run(np.zeros((1, 32, 48, 3), np.float32))
    status = demo.main(["--model", damaged, "--image", images, "--output", images + "_drawn"])
    loaded = sorted(name for name in sys.modules
                    if name.split(".")[0] in ("tensorflow", "keras"))
    print(json.dumps({"status": status, "loaded": loaded, "shape": list(heatmaps.shape)}))
""")


def test_the_openvino_path_runs_with_tensorflow_hidden(tiny_exports, tiny_openvino, tmp_path):
    damaged = damaged_copies({"onnx": tiny_exports["onnx"], "tflite":
                              tiny_exports["litert"]["float32"], "xml": tiny_openvino},
                             str(tmp_path))["half_bin"]
    completed = subprocess.run(
        [sys.executable, "-c", HIDDEN_TENSORFLOW_OPENVINO, tiny_openvino, damaged,
         tiny_exports["images"]], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"status": 2, "loaded": [], "shape": [1, 8, 12, 15]}
    assert "Traceback" not in completed.stderr
    errors = completed.stderr.strip().splitlines()
    assert len(errors) == 1 and "half_bin.xml: OpenVINO cannot load this model" in errors[0]
