"""Tests for config.py: the skeleton constants, presets, the CLI and save/load."""

import argparse
import dataclasses
import json

import pytest

import config
from config import (FLIP_JOINTS, FLIP_LIMBS, FLIP_PAIRS, JOINT_NAMES, LIMBS, NECK,
                    NUM_TREE_LIMBS, Config)


def test_joint_order_is_the_data_sets():
    assert len(JOINT_NAMES) == 14
    assert JOINT_NAMES[0] == "right_shoulder"
    assert JOINT_NAMES[2] == "right_wrist"
    assert JOINT_NAMES[11] == "left_ankle"
    assert JOINT_NAMES[12] == "head_top"
    assert JOINT_NAMES[13] == "neck"
    assert NECK == JOINT_NAMES.index("neck")


def test_tree_limbs_join_every_joint_to_the_neck_in_order():
    """Walking the first 13 limbs in order, each limb starts at a joint already reached."""
    reached = {NECK}
    for joint_a, joint_b in LIMBS[:NUM_TREE_LIMBS]:
        assert joint_a in reached, (joint_a, joint_b)
        assert joint_b not in reached, (joint_a, joint_b)
        reached.add(joint_b)
    assert reached == set(range(14))
    # The redundant limbs only join joints the tree already has.
    assert len(LIMBS) == 15
    assert len(set(LIMBS)) == len(LIMBS)


def test_flip_permutations_are_involutions_that_swap_sides():
    assert all(FLIP_JOINTS[FLIP_JOINTS[j]] == j for j in range(14))
    for left, right in FLIP_PAIRS:
        assert JOINT_NAMES[left].replace("right", "left") == JOINT_NAMES[right]
        assert FLIP_JOINTS[left] == right
    assert FLIP_JOINTS[12] == 12 and FLIP_JOINTS[13] == 13
    assert all(FLIP_LIMBS[FLIP_LIMBS[k]] == k for k in range(len(LIMBS)))
    # neck-right shoulder becomes neck-left shoulder.
    assert LIMBS[FLIP_LIMBS[LIMBS.index((13, 0))]] == (13, 3)


def test_paper_preset_is_the_default_config():
    paper = config.make_config("paper")
    assert paper == Config(preset="paper")
    assert (paper.input_size, paper.stride, paper.stages) == (368, 8, 6)
    assert paper.learning_rate == 4e-5 and paper.momentum == 0.9 and paper.weight_decay == 5e-4
    # The original's parser thresholds: peaks above 0.1, limbs of any length above zero whose
    # samples pass 0.05.
    assert (paper.peak_threshold, paper.paf_threshold, paper.min_limb_length) == (0.1, 0.05, 0)


def test_cpu_preset_overrides_only_known_fields():
    cpu = config.make_config("cpu")
    assert cpu.preset == "cpu"
    assert cpu.input_size % cpu.stride == 0
    assert cpu.stages < Config().stages
    with pytest.raises(ValueError, match="unknown config keys"):
        config.make_config("cpu", not_a_field=1)
    with pytest.raises(ValueError, match="unknown preset"):
        config.make_config("gpu9000")


def _parse(argv):
    parser = config.add_config_arguments(argparse.ArgumentParser())
    return config.config_from_args(parser.parse_args(argv))


def test_cli_overrides_every_kind_of_field():
    cfg = _parse(["--preset", "cpu", "--batch-size", "3", "--learning_rate", "0.01",
                  "--scales", "0.5,1", "--flip_test", "--mixed-precision", "false",
                  "--run_name", "trial"])
    assert cfg.preset == "cpu"
    assert cfg.batch_size == 3
    assert cfg.learning_rate == 0.01
    assert cfg.scales == (0.5, 1)
    assert cfg.flip_test is True
    assert cfg.mixed_precision is False
    assert cfg.name == "trial"
    # Fields not given keep the preset's values.
    assert cfg.input_size == config.PRESETS["cpu"]["input_size"]


def test_cli_rejects_unknown_keys_and_bad_values(capsys):
    with pytest.raises(SystemExit):
        _parse(["--no_such_key", "1"])
    assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--batch_size", "many"])
    with pytest.raises(SystemExit):
        _parse(["--flip_test", "maybe"])


def test_every_field_has_a_cli_option():
    parser = config.add_config_arguments(argparse.ArgumentParser())
    destinations = {action.dest for action in parser._actions}
    for field in dataclasses.fields(Config):
        if field.name != "preset":
            assert "cfg_" + field.name in destinations


def test_save_and_load_round_trip(tmp_path):
    cfg = config.make_config("cpu", scales=(0.5, 1.0), run_name="x")
    path = tmp_path / "run" / "config.json"
    config.save_config(cfg, str(path))
    assert json.loads(path.read_text())["scales"] == [0.5, 1.0]
    assert config.load_config(str(path)) == cfg


def test_load_rejects_unknown_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"batch_size": 2, "colour": "blue"}))
    with pytest.raises(ValueError, match="colour"):
        config.load_config(str(path))


def test_run_directories_use_the_run_name():
    cfg = config.make_config("cpu", run_name="abc", models_dir="m", logs_dir="l")
    assert config.run_directories(cfg) == ("m/abc", "l/abc")


def test_inference_config_takes_inference_settings_and_paths_only():
    saved = config.make_config("tiny", run_name="run")
    cfg = config.inference_config(saved, {"scales": (0.5, 1), "flip_test": True,
                                          "models_dir": "elsewhere"})
    assert cfg == dataclasses.replace(saved, scales=(0.5, 1), flip_test=True,
                                      models_dir="elsewhere")
    for field in ("stride", "batch_size", "heatmap_sigma", "pad_value"):  # network or training
        with pytest.raises(ValueError, match=f"--{field} is fixed by the checkpoint"):
            config.inference_config(saved, {field: getattr(saved, field)})


def test_light_preset_is_osokins_network_with_the_cpu_recipe():
    light, cpu = config.make_config("light"), config.make_config("cpu")
    assert (light.network, light.stride, light.stages) == ("light", 8, 2)
    assert (light.stage_channels, light.stage1_hidden, light.stage_convs) == (128, 512, 5)
    assert (light.stage1_kernel, light.stage_kernel, light.cpm_channels) == (3, 3, (128, 128))
    assert light.input_normalization == "mobilenet" and light.batch_norm
    # Like cpu it trains from scratch offline; everything but the architecture is cpu's, but
    # XLA, which slows its depthwise convolutions down, and the shortest limb, which is the
    # same 4 input pixels in its twice as coarse grid.
    assert light.backbone_weights == "none"
    assert cpu.jit_compile and not light.jit_compile
    assert light.min_limb_length * light.stride == cpu.min_limb_length * cpu.stride == 4.0
    for name in config.fields_with_role(*(set(config.ROLES) - {config.ARCHITECTURE})):
        assert (getattr(light, name) == getattr(cpu, name)
                or name in ("jit_compile", "min_limb_length")), name
    assert light.input_size % light.stride == 0
    assert Config().network == "openpose" and config.make_config("cpu").network == "openpose"


def test_light_preset_from_the_command_line():
    cfg = _parse(["--preset", "light", "--stages", "3", "--backbone-weights", "imagenet"])
    assert (cfg.network, cfg.stages, cfg.backbone_weights) == ("light", 3, "imagenet")
    assert _parse(["--network", "light"]).network == "light"


def test_a_saved_config_without_a_network_is_openpose(tmp_path):
    path = tmp_path / "config.json"
    values = config.make_config("cpu").to_dict()
    del values["network"]
    path.write_text(json.dumps(values))
    assert config.load_config(str(path)).network == "openpose"
