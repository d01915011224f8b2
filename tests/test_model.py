"""Tests of model.py: architecture, parameter count, normalisation, backbone weights, loading."""

import dataclasses

import keras
import numpy as np
import pytest

import config
import model
from config import NUM_HEATMAPS, NUM_PAFS

# Keras' saving under NumPy 2 warns once per variable; that noise is not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def tiny_config(**overrides):
    return config.make_config("tiny", **overrides)


def conv_parameters(kernel, inputs, outputs):
    return kernel * kernel * inputs * outputs + outputs


def expected_parameters(cfg):
    """The parameter count written out from the layer sizes of the specification.

    With batch normalisation every hidden convolution also has 4 values per output channel
    (scale, offset, moving mean, moving variance); output convolutions have none.
    """
    def hidden_conv(kernel, inputs, outputs):
        return conv_parameters(kernel, inputs, outputs) + (4 * outputs if cfg.batch_norm else 0)

    widths = list(cfg.backbone_channels)
    widths += [widths[-1]] * (4 - len(widths))
    total, channels = 0, 3
    for width, count in zip(widths, (2, 2, 4, 2)):
        for _ in range(count):
            total += hidden_conv(3, channels, width)
            channels = width
    total += hidden_conv(3, channels, cfg.cpm_channels[0])
    total += hidden_conv(3, cfg.cpm_channels[0], cfg.cpm_channels[1])
    features = cfg.cpm_channels[1]
    for out in (NUM_PAFS, NUM_HEATMAPS):
        total += hidden_conv(cfg.stage1_kernel, features, cfg.stage_channels)
        total += 2 * hidden_conv(cfg.stage1_kernel, cfg.stage_channels, cfg.stage_channels)
        total += hidden_conv(1, cfg.stage_channels, cfg.stage1_hidden)
        total += conv_parameters(1, cfg.stage1_hidden, out)
    stage_inputs = features + NUM_PAFS + NUM_HEATMAPS
    for _ in range(cfg.stages - 1):
        for out in (NUM_PAFS, NUM_HEATMAPS):
            total += hidden_conv(cfg.stage_kernel, stage_inputs, cfg.stage_channels)
            total += (cfg.stage_convs - 1) * hidden_conv(cfg.stage_kernel, cfg.stage_channels,
                                                         cfg.stage_channels)
            total += hidden_conv(1, cfg.stage_channels, cfg.stage_channels)
            total += conv_parameters(1, cfg.stage_channels, out)
    return total


def test_paper_model_has_the_specified_layers_and_parameter_count():
    cfg = config.Config()
    network = model.build_model(cfg)
    # VGG19 to conv4_2 (5,865,536) + CPM (1,474,944) + stage 1 (1,040,685) + five later
    # stages of 8,632,749 each (7x7 on 128 + 30 + 15 inputs, four 7x7/128, 1x1/128, 1x1 out).
    assert network.count_params() == expected_parameters(cfg) == 51_544_910
    names = {layer.name for layer in network.layers}
    for name in ("conv1_1", "conv3_4", "conv4_2", "conv4_3_CPM", "conv4_4_CPM",
                 "conv5_1_CPM_L1", "conv5_5_CPM_L2", "Mconv1_stage2_L1", "Mconv7_stage6_L2",
                 "concat_stage6"):
        assert name in names
    assert "conv4_3" not in names and "Mconv8_stage2_L1" not in names
    assert network.get_layer("Mconv1_stage2_L1").kernel.shape == (7, 7, 128 + 45, 128)
    assert network.get_layer("conv5_4_CPM_L2").kernel.shape == (1, 1, 128, 512)
    assert len(network.outputs) == 12
    assert [tuple(output.shape)[-1] for output in network.outputs] == [NUM_PAFS, NUM_HEATMAPS] * 6


def test_cpu_preset_parameter_count_and_forward_shapes():
    cfg = config.make_config("cpu")
    network = model.build_model(cfg)
    assert network.count_params() == expected_parameters(cfg)
    assert cfg.batch_norm and not config.Config().batch_norm
    assert isinstance(network.get_layer("conv1_1_bn"), keras.layers.BatchNormalization)
    assert network.get_layer("conv1_1").activation is keras.activations.linear
    assert model.build_model(config.make_config("cpu", batch_norm=False)).count_params() == \
        expected_parameters(config.make_config("cpu", batch_norm=False))
    # With three backbone widths, block4 (conv4_1, conv4_2) reuses the last one.
    assert len(cfg.backbone_channels) == 3
    last = cfg.backbone_channels[-1]
    assert model.backbone_widths(cfg) == tuple(cfg.backbone_channels) + (last,)
    assert network.get_layer("conv4_1").kernel.shape == (3, 3, last, last)
    outputs = network(np.zeros((1, cfg.input_size, cfg.input_size, 3), np.float32))
    grid = cfg.input_size // cfg.stride
    assert len(outputs) == 2 * cfg.stages
    for index, output in enumerate(outputs):
        channels = NUM_PAFS if index % 2 == 0 else NUM_HEATMAPS
        assert tuple(output.shape) == (1, grid, grid, channels)


@pytest.mark.parametrize("stride", [8, 4])
def test_any_multiple_of_the_stride_works(stride):
    network = model.build_model(tiny_config(stride=stride))
    outputs = network(np.full((2, 64, 96, 3), 128.0, np.float32))
    assert tuple(outputs[-1].shape) == (2, 64 // stride, 96 // stride, NUM_HEATMAPS)
    assert tuple(outputs[-2].shape) == (2, 64 // stride, 96 // stride, NUM_PAFS)
    pools = [layer.name for layer in network.layers if "pool" in layer.name]
    assert len(pools) == {8: 3, 4: 2}[stride]


def test_invalid_geometry_is_rejected():
    with pytest.raises(ValueError, match="stride"):
        model.build_model(tiny_config(stride=3))
    with pytest.raises(ValueError, match="backbone_channels"):
        model.build_model(tiny_config(backbone_channels=(8, 8, 8, 8, 8)))


@pytest.mark.parametrize("mode, expected", [
    ("imagenet", [[30 - 103.939, 20 - 116.779, 10 - 123.68],
                  [128 - 103.939, 0 - 116.779, 255 - 123.68]]),
    ("openpose", [[(30 - 128) / 256, (20 - 128) / 256, (10 - 128) / 256],
                  [0.0, -0.5, (255 - 128) / 256]]),
    # MobileNet's keeps RGB order: x / 127.5 - 1.
    ("mobilenet", [[10 / 127.5 - 1, 20 / 127.5 - 1, 30 / 127.5 - 1],
                   [1.0, -1.0, 128 / 127.5 - 1]]),
])
def test_input_normalization_flips_to_bgr_then_shifts_and_scales(mode, expected):
    images = np.array([[[[10.0, 20.0, 30.0], [255.0, 0.0, 128.0]]]], np.float32)
    result = np.asarray(model.InputNormalization(mode)(images))
    np.testing.assert_allclose(result, np.array([[expected]], np.float32), rtol=0, atol=1e-4)


def test_input_normalization_is_the_configs_and_survives_saving(tmp_path):
    network = model.build_model(tiny_config(input_normalization="openpose"))
    assert network.get_layer("input_normalization").mode == "openpose"
    path = str(tmp_path / "net.keras")
    network.save(path)
    import keras

    assert keras.models.load_model(path).get_layer("input_normalization").mode == "openpose"
    with pytest.raises(ValueError, match="input_normalization"):
        model.build_model(tiny_config(input_normalization="torch"))


def test_outputs_are_float32_under_mixed_precision():
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        network = model.build_model(tiny_config())
        outputs = network(np.zeros((1, 32, 32, 3), np.float32))
        assert network.get_layer("conv1_1").compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert [output.dtype.name for output in outputs] == ["float32"] * 4


def test_same_config_builds_the_same_weights_and_layers_differ():
    first = model.build_model(tiny_config(seed=3))
    second = model.build_model(tiny_config(seed=3))
    other = model.build_model(tiny_config(seed=4))
    kernel = first.get_layer("conv3_2").kernel.numpy()
    np.testing.assert_array_equal(kernel, second.get_layer("conv3_2").kernel.numpy())
    assert not np.array_equal(kernel, first.get_layer("conv3_3").kernel.numpy())
    assert not np.array_equal(kernel, other.get_layer("conv3_2").kernel.numpy())
    # Output layers start small so the untrained network predicts nearly-zero maps.
    assert np.abs(first.get_layer("Mconv3_stage2_L2").kernel.numpy()).max() < 0.1


def test_initialisation_follows_the_backbone_choice():
    scratch = model.build_model(tiny_config(stage_channels=64))
    pretrained = model.build_model(tiny_config(stage_channels=64, backbone_weights="imagenet"))
    fan_in = 3 * 3 * 8
    # He-normal (truncated at 2 sigma, hence ~0.88) for hidden layers trained from scratch...
    scratch_std = scratch.get_layer("conv5_2_CPM_L1").kernel.numpy().std()
    assert scratch_std == pytest.approx(0.88 * np.sqrt(2 / (9 * 64)), rel=0.15)
    # ...the original's N(0, 0.01) after a pretrained backbone.
    assert pretrained.get_layer("conv5_2_CPM_L1").kernel.numpy().std() == pytest.approx(0.01,
                                                                                        rel=0.15)
    # conv1_1 is scaled by the spread of the normalised pixels, so activations start near unit
    # scale: 58 under imagenet, 58 / 256 under openpose.
    for mode, spread in (("imagenet", 58.0), ("openpose", 58.0 / 256)):
        network = model.build_model(tiny_config(stage_channels=64, input_normalization=mode))
        first = network.get_layer("conv1_1").kernel.numpy().std()
        assert first == pytest.approx(0.88 * np.sqrt(2 / 27) / spread, rel=0.3)
        pixels = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
        normalised = network.get_layer("input_normalization")(pixels)
        activations = np.asarray(network.get_layer("conv1_1").convolution_op(
            normalised, network.get_layer("conv1_1").kernel))
        assert 0.2 < activations.std() < 5.0
    assert scratch.get_layer("conv2_1").kernel.numpy().std() == pytest.approx(
        0.88 * np.sqrt(2 / fan_in), rel=0.15)


def test_stage_of_layer():
    assert model.stage_of_layer("Mconv3_stage4_L2") == 4
    assert model.stage_of_layer("conv5_1_CPM_L1") == 1
    assert model.stage_of_layer("conv4_2") == 1


def vgg_width_config():
    # VGG19's widths with a small head, so the backbone can take VGG19 weights cheaply.
    return tiny_config(backbone_channels=(64, 128, 256, 512), stages=1)


@pytest.fixture(scope="module")
def random_vgg19():
    from keras.applications import VGG19

    return VGG19(include_top=False, weights=None, input_shape=(None, None, 3))


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_backbone_weights_from_a_file_are_copied_exactly(tmp_path, random_vgg19, suffix):
    path = str(tmp_path / f"vgg19{suffix}")
    if suffix == ".keras":
        random_vgg19.save(path)
    else:
        random_vgg19.save_weights(path)
    network = model.build_model(vgg_width_config())
    assert model.load_backbone_weights(network, path) == 10
    sources = [layer for layer in random_vgg19.layers if layer.__class__.__name__ == "Conv2D"]
    for name, source in zip(model.BACKBONE_LAYER_NAMES, sources):
        for copied, original in zip(network.get_layer(name).get_weights(), source.get_weights()):
            np.testing.assert_array_equal(copied, original)
    # Layers after the backbone keep their own initialisation.
    assert network.get_layer("conv4_3_CPM").kernel.shape == (3, 3, 512, 8)


def test_backbone_weights_need_vgg_widths_and_an_existing_file(tmp_path):
    with pytest.raises(ValueError, match="backbone_weights none"):
        model.load_backbone_weights(model.build_model(tiny_config()), "imagenet")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        model.load_backbone_weights(model.build_model(vgg_width_config()),
                                    str(tmp_path / "missing.weights.h5"))
    assert model.load_backbone_weights(model.build_model(tiny_config()), "none") == 0


def test_offline_imagenet_download_names_the_alternative(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None")

    # Only the download is replaced: no network access happens in this test.
    monkeypatch.setattr(keras.applications, "VGG19", offline)
    with pytest.raises(RuntimeError) as error:
        model.load_backbone_weights(model.build_model(vgg_width_config()), "imagenet")
    message = str(error.value)
    assert "--backbone_weights PATH" in message and model.VGG19_NOTOP_URL in message


def test_load_checkpoint_rebuilds_from_config_json(tmp_path):
    cfg = tiny_config(seed=7, run_name="tiny")
    network = model.build_model(cfg)
    run_dir = tmp_path / "tiny"
    run_dir.mkdir()
    network.save(str(run_dir / "last.keras"))
    config.save_config(cfg, str(run_dir / "config.json"))
    for path in (str(run_dir / "last.keras"), str(run_dir)):
        loaded, loaded_cfg = model.load_checkpoint(path)
        assert loaded_cfg == cfg
        for mine, theirs in zip(network.get_weights(), loaded.get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    (run_dir / "config.json").unlink()
    with pytest.raises(model.CheckpointError, match="config.json"):
        model.load_checkpoint(str(run_dir / "last.keras"))


def saved_run(directory, cfg):
    """A run directory with last.keras (its config embedded, as train.py saves) and config.json."""
    directory.mkdir()
    network = model.build_model(cfg)
    network.save(str(directory / "last.keras"))
    model.embed_config(str(directory / "last.keras"), cfg)
    config.save_config(cfg, str(directory / "config.json"))
    return network


def test_load_checkpoint_refuses_a_config_json_edited_to_another_architecture(tmp_path):
    cfg = tiny_config(batch_norm=True)
    saved_run(tmp_path / "run", cfg)
    assert model.embedded_config(str(tmp_path / "run" / "last.keras")) == cfg
    config.save_config(dataclasses.replace(cfg, batch_norm=False),
                       str(tmp_path / "run" / "config.json"))
    with pytest.raises(model.CheckpointError, match="batch_norm True -> False"):
        model.load_checkpoint(str(tmp_path / "run"))


def test_load_checkpoint_refuses_weights_that_keras_skipped(tmp_path):
    # Without the embedded config (a checkpoint of an older version) Keras itself loads a
    # batch-norm network's file into a network without batch norm and says nothing; the check
    # that every variable came from the file catches it.
    cfg = tiny_config(batch_norm=True)
    (tmp_path / "run").mkdir()
    model.build_model(cfg).save(str(tmp_path / "run" / "last.keras"))
    config.save_config(dataclasses.replace(cfg, batch_norm=False),
                       str(tmp_path / "run" / "config.json"))
    with pytest.raises(model.CheckpointError, match="were not loaded"):
        model.load_checkpoint(str(tmp_path / "run"))


def test_load_checkpoint_names_a_file_that_is_not_a_keras_archive(tmp_path):
    cfg = tiny_config()
    saved_run(tmp_path / "run", cfg)
    (tmp_path / "run" / "last.keras").write_text("not a model")
    with pytest.raises(model.CheckpointError, match="not a Keras .keras archive"):
        model.load_checkpoint(str(tmp_path / "run" / "last.keras"))


def test_load_checkpoint_names_a_config_json_it_cannot_read(tmp_path):
    saved_run(tmp_path / "run", tiny_config())
    (tmp_path / "run" / "config.json").write_text("{not json")
    with pytest.raises(model.CheckpointError) as raised:
        model.load_checkpoint(str(tmp_path / "run"))
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'run' / 'config.json'}: cannot be read as a run's "
                              "config (Expecting property name")
    assert message.count(str(tmp_path)) == 1


# ---------------------------------------------------------------------------------------------
# Lightweight OpenPose (network light)
# ---------------------------------------------------------------------------------------------
def light_config(**overrides):
    return config.make_config("light", **overrides)


def expected_light_parameters(stages):
    """Lightweight OpenPose's parameter count written out from Osokin's layer sizes.

    A batch normalisation holds 4 values per channel (scale, offset, moving mean, moving
    variance). MobileNet's convolutions and the CPM's depthwise-separable units have no bias.
    """
    batch_norm = 4
    # MobileNet to conv5_5: conv1 (3x3, 3 -> 32), then per block a 3x3 depthwise on its inputs
    # and a 1x1 to its width, each followed by batch normalisation.
    total = 3 * 3 * 3 * 32 + batch_norm * 32
    blocks = ((32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)) + \
        ((512, 512),) * 5
    for inputs, outputs in blocks:
        total += 3 * 3 * inputs + batch_norm * inputs + inputs * outputs + batch_norm * outputs
    # CPM: 1x1 512 -> 128, three units of 3x3 depthwise + 1x1 128, then a 3x3 128 -> 128.
    total += conv_parameters(1, 512, 128) + 3 * (3 * 3 * 128 + 128 * 128)
    total += conv_parameters(3, 128, 128)
    # Initial stage: three 3x3 128 -> 128, then per branch 1x1 128 -> 512 and 512 -> out.
    total += 3 * conv_parameters(3, 128, 128)
    for out in (NUM_PAFS, NUM_HEATMAPS):
        total += conv_parameters(1, 128, 512) + conv_parameters(1, 512, out)
    # Refinement stages: five blocks of 1x1 (from the concatenation in the first), 3x3 + batch
    # norm and dilated 3x3 + batch norm, then per branch 1x1 128 -> 128 and 128 -> out.
    trunk = 2 * (conv_parameters(3, 128, 128) + batch_norm * 128)
    for _ in range(stages - 1):
        total += conv_parameters(1, 128 + NUM_PAFS + NUM_HEATMAPS, 128) + trunk
        total += 4 * (conv_parameters(1, 128, 128) + trunk)
        for out in (NUM_PAFS, NUM_HEATMAPS):
            total += conv_parameters(1, 128, 128) + conv_parameters(1, 128, out)
    return total


@pytest.fixture(scope="module")
def light_network():
    return model.build_model(light_config())


def test_light_preset_has_osokins_layers_and_parameter_count(light_network):
    # MobileNet 1,627,840 + CPM 265,856 + initial stage 597,933 + one refinement stage
    # 1,608,109.
    assert light_network.count_params() == expected_light_parameters(2) == 4_099_738
    strides = {name: light_network.get_layer(name).strides for name in
               (f"conv_dw_{block}" for block in range(1, 12))}
    assert [block for block, stride in enumerate(strides.values(), 1) if stride != (1, 1)] == [2, 4]
    assert light_network.get_layer("conv1").strides == (2, 2)
    # conv4_2 (block 6) keeps the grid; conv5_1 (block 7) is dilated instead, as in Osokin's.
    dilated = [block for block in range(1, 12)
               if light_network.get_layer(f"conv_dw_{block}").dilation_rate != (1, 1)]
    assert dilated == [7]
    names = {layer.name for layer in light_network.layers}
    assert set(model.MOBILENET_LAYER_NAMES) <= names and "conv_dw_12" not in names
    assert light_network.get_layer("conv_pw_11").kernel.shape == (1, 1, 512, 512)
    assert light_network.get_layer("cpm_dw1").activation is keras.activations.elu
    assert isinstance(light_network.get_layer("refinement_stage2_block5_dilated_bn"),
                      keras.layers.BatchNormalization)
    assert light_network.get_layer("refinement_stage2_block1_dilated").dilation_rate == (2, 2)
    assert "refinement_stage2_block1_align_bn" not in names
    # The project's concatenation order: [PAFs, heatmaps, features].
    concat = light_network.get_layer("concat_stage2")
    assert [tensor._keras_history.operation.name for tensor in concat.input] == [
        "initial_stage_L1", "initial_stage_L2", "cpm_conv"]
    assert light_network.get_layer("refinement_stage2_block1_align").kernel.shape == \
        (1, 1, NUM_PAFS + NUM_HEATMAPS + 128, 128)


@pytest.mark.parametrize("stages", [1, 3])
def test_light_stage_count_changes_only_the_refinement_stages(stages):
    network = model.build_model(light_config(stages=stages))
    assert network.count_params() == expected_light_parameters(stages)
    outputs = network(np.zeros((1, 64, 64, 3), np.float32))
    assert [tuple(output.shape) for output in outputs] == \
        [(1, 8, 8, NUM_PAFS), (1, 8, 8, NUM_HEATMAPS)] * stages
    assert list(network.output_names)[-1] == f"stage{stages}_heatmaps"


@pytest.mark.parametrize("height, width", [(368, 368), (368, 656)])
def test_light_outputs_are_the_stage_list_at_an_eighth(light_network, height, width):
    images = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    outputs = light_network(images)
    assert list(light_network.output_names) == [
        "stage1_pafs", "stage1_heatmaps", "stage2_pafs", "stage2_heatmaps"]
    grid = (1, height // 8, width // 8)
    assert [tuple(output.shape) for output in outputs] == \
        [grid + (NUM_PAFS,), grid + (NUM_HEATMAPS,)] * 2
    assert all(output.dtype.name == "float32" and np.isfinite(np.asarray(output)).all()
               for output in outputs)


def test_light_network_rejects_what_it_cannot_be():
    with pytest.raises(ValueError, match="stride must be 8"):
        model.build_model(light_config(stride=4))
    with pytest.raises(ValueError, match="batch_norm must be true"):
        model.build_model(light_config(batch_norm=False))
    with pytest.raises(ValueError, match="network must be one of"):
        model.build_model(light_config(network="heavy"))


def test_light_refinement_layers_get_the_stage_learning_rate():
    assert model.stage_of_layer("refinement_stage3_block2_conv_bn") == 3
    assert model.learning_rate_multiplier("refinement_stage2_L1/bias", 4.0, 2.0) == 8.0
    assert model.learning_rate_multiplier("initial_stage_L1/kernel", 4.0, 2.0) == 1.0
    assert model.learning_rate_multiplier("conv_pw_11_bn/gamma", 4.0, 2.0) == 1.0


def random_mobilenet():
    """keras.applications MobileNet (no top) with every array random, batch norms included."""
    mobilenet = keras.applications.MobileNet(weights=None, include_top=False,
                                             input_shape=(64, 64, 3))
    rng = np.random.default_rng(1)
    # Positive values keep the moving variances valid; they also make the outputs finite.
    mobilenet.set_weights([rng.uniform(0.5, 1.5, weight.shape).astype(np.float32) * 0.3
                           for weight in mobilenet.get_weights()])
    return mobilenet


def test_light_backbone_weights_from_a_file_are_copied_by_name(tmp_path):
    mobilenet = random_mobilenet()
    path = str(tmp_path / "mobilenet.weights.h5")
    mobilenet.save_weights(path)
    network = model.build_model(light_config())
    after_backbone = [layer for layer in network.layers
                      if layer.weights and layer.name not in model.MOBILENET_LAYER_NAMES]
    before = {layer.name: layer.get_weights() for layer in after_backbone}
    assert model.load_backbone_weights(network, path) == len(model.MOBILENET_LAYER_NAMES) == 46
    for name in model.MOBILENET_LAYER_NAMES:
        for copied, original in zip(network.get_layer(name).get_weights(),
                                    mobilenet.get_layer(name).get_weights()):
            np.testing.assert_array_equal(copied, original)
    for layer in after_backbone:
        for now, then in zip(layer.get_weights(), before[layer.name]):
            np.testing.assert_array_equal(now, then)
    # Up to conv_pw_5 (before the stride change) the light network computes MobileNet itself:
    # the same padding, ReLU6 and x / 127.5 - 1 input.
    images = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    ours = keras.Model(network.input, network.get_layer("conv_pw_5_relu").output)(images)
    theirs = keras.Model(mobilenet.input, mobilenet.get_layer("conv_pw_5_relu").output)(
        images / 127.5 - 1)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-4)


# Keras warns about each VGG19 layer it cannot place before it gives up; the refusal is the point.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_light_backbone_weights_of_another_network_are_refused(tmp_path, random_vgg19):
    path = str(tmp_path / "vgg19.weights.h5")
    random_vgg19.save_weights(path)
    with pytest.raises(ValueError, match="MobileNet"):
        model.load_backbone_weights(model.build_model(light_config()), path)


def test_light_backbone_weights_that_keras_skipped_are_refused(tmp_path, monkeypatch):
    path = str(tmp_path / "mobilenet.weights.h5")
    random_mobilenet().save_weights(path)
    # Keras may leave a layer it could not match freshly initialised, with only a warning; a
    # MobileNet that ignores the file stands in for that.
    fresh = keras.applications.MobileNet

    def ignoring_the_file(**arguments):
        return fresh(**dict(arguments, weights=None))

    monkeypatch.setattr(keras.applications, "MobileNet", ignoring_the_file)
    with pytest.raises(ValueError, match="conv1 was not loaded from this file"):
        model.load_backbone_weights(model.build_model(light_config()), path)


def test_offline_imagenet_mobilenet_names_the_local_file(monkeypatch, tmp_path):
    import socket
    import urllib.error

    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    requested = []

    def offline(url, *args, **kwargs):
        requested.append(url)
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    # Only the download itself is replaced (no network access happens), and the cache is an
    # empty folder, so that a real cached file cannot hide the failure.
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    monkeypatch.setattr(keras_config, "keras_home", lambda: str(tmp_path))
    with pytest.raises(RuntimeError) as error:
        model.load_backbone_weights(model.build_model(light_config()), "imagenet")
    message = str(error.value)
    assert requested == [model.MOBILENET_NOTOP_URL]
    assert "\n" not in message
    assert "--backbone_weights PATH" in message and model.MOBILENET_NOTOP_URL in message
    assert "mobilenet_1_0_224_tf_no_top.h5" in message


def test_light_train_step_lowers_the_loss_and_stays_finite(tmp_path):
    import dataset
    import trainer as trainer_module

    cfg = light_config(input_size=64, batch_size=2, models_dir=str(tmp_path / "models"),
                       logs_dir=str(tmp_path / "logs"))
    network = model.build_model(cfg)
    trainer, _ = trainer_module.make_trainer(cfg, network)
    batch = next(iter(dataset.synthetic_dataset(cfg, "train", True, batches=1)))
    before = [variable.numpy().copy() for variable in network.trainable_variables]
    losses = []
    for _ in range(2):
        trainer.reset_metrics()  # so that each step logs its own loss, not a running mean
        logs = trainer.train_step(batch)
        losses.append(float(logs["loss"]))
        assert float(logs["nonfinite_steps"]) == 0
    assert np.isfinite(losses).all() and losses[1] < losses[0]
    assert all(np.isfinite(variable.numpy()).all() for variable in network.weights)
    changed = [not np.array_equal(variable.numpy(), start)
               for variable, start in zip(network.trainable_variables, before)]
    assert all(changed)


def test_light_checkpoint_loads_back_exactly(tmp_path):
    cfg = light_config(run_name="light")
    network = saved_run(tmp_path / "run", cfg)
    loaded, loaded_cfg = model.load_checkpoint(str(tmp_path / "run"))
    assert loaded_cfg == cfg and loaded.name == network.name
    for mine, theirs in zip(network.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
