"""Tests of train.py: the loss, the optimiser's multipliers, checkpoints, resume after SIGKILL,
the NaN guard, and mirrored / multi-worker distribution (in subprocesses, on CPU)."""

import csv
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import cv2
import keras
import numpy as np
import pytest

import config
import dataset
import callbacks
import checkpoints
import model
import train
import trainer as trainer_module
from tests.conftest import SimulatedKill, kill_after_renames

# Keras' saving under NumPy 2 warns once per variable; that noise is not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# In-process tests check the optimisation itself, so they leave out batch normalisation, whose
# moving statistics need more than a few steps before evaluation-mode losses mean anything; the
# subprocess tests below keep the cpu preset's batch normalisation.
TINY = dict(batch_norm=False)
TINY_FLAGS = ["--preset", "tiny", "--log_images_every", "1000"]
SUBPROCESS_TIMEOUT = 240


def tiny_config(tmp_path, **overrides):
    values = dict(TINY, models_dir=str(tmp_path / "models"), logs_dir=str(tmp_path / "logs"),
                  run_name="tiny")
    values.update(overrides)
    return config.make_config("tiny", **values)


def subprocess_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def last_json_line(text):
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary in the output:\n{text[-3000:]}"
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------
def test_masked_l2_is_caffe_euclidean_with_the_mask_broadcast_over_channels():
    prediction = np.zeros((2, 1, 2, 2), np.float32)
    prediction[0, 0, 0] = (1.0, 2.0)  # cell kept: 1 + 4
    prediction[0, 0, 1] = (5.0, 5.0)  # cell masked out
    prediction[1, 0, 1] = (0.0, 3.0)  # cell kept: 9
    target = np.zeros_like(prediction)
    target[1, 0, 1] = (0.0, 1.0)  # error 2 -> 4 instead of 9
    mask = np.array([[[[1.0], [0.0]]], [[[1.0], [1.0]]]], np.float32)
    # (1 + 4 + 4) / batch 2 / 2
    assert float(model.masked_l2(prediction, target, mask)) == pytest.approx(9.0 / 4.0)


def test_trainer_loss_is_the_sum_over_stages_and_branches(tmp_path):
    cfg = tiny_config(tmp_path)
    network = model.build_model(cfg)
    trainer, _ = trainer_module.make_trainer(cfg, network)
    images, targets = next(iter(dataset.synthetic_dataset(cfg, "val", False)))
    logs = trainer.test_step((images, targets))
    outputs = [np.asarray(output) for output in network(images)]
    mask, batch = targets["mask"].numpy(), images.shape[0]
    expected = {}
    for stage in range(cfg.stages):
        for offset, branch, key in ((0, "paf", "pafs"), (1, "heatmap", "heatmaps")):
            error = (outputs[2 * stage + offset] - targets[key].numpy()) ** 2 * mask
            expected[f"stage{stage + 1}_{branch}_loss"] = error.sum() / batch / 2
    for name, value in expected.items():
        assert float(logs[name]) == pytest.approx(value, rel=1e-4)
    assert float(logs["paf_loss"]) == pytest.approx(
        expected["stage1_paf_loss"] + expected["stage2_paf_loss"], rel=1e-4)
    assert float(logs["loss"]) == pytest.approx(sum(expected.values()), rel=1e-4)


def constant_prediction_loss(targets, stages):
    """The loss of the best constant map per channel (the masked channel means) on a batch."""
    mask, total = targets["mask"].numpy(), 0.0
    for key in ("pafs", "heatmaps"):
        values = targets[key].numpy()
        means = (values * mask).sum(axis=(0, 1, 2)) / mask.sum()
        total += 0.5 * ((values - means) ** 2 * mask).sum() / values.shape[0]
    return stages * total


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(tmp_path):
    cfg = tiny_config(tmp_path, optimizer="adam", learning_rate=1e-3)
    trainer, _ = trainer_module.make_trainer(cfg, model.build_model(cfg))
    batch_data = dataset.synthetic_dataset(cfg, "train", True, batches=1)
    batch = next(iter(batch_data))
    before = float(trainer.test_step(batch)["loss"])
    trainer.fit(batch_data, epochs=1, steps_per_epoch=15, verbose=0, shuffle=False)
    trainer.reset_metrics()
    after = float(trainer.test_step(batch)["loss"])
    # Random targets: the tiny network can at best learn each channel's mean, so it must close
    # at least half of the gap between its first loss and that constant prediction's loss.
    floor = constant_prediction_loss(batch[1], cfg.stages)
    assert floor < before
    assert after < floor + 0.5 * (before - floor)


def test_weight_decay_is_an_l2_term_on_kernels_only(tmp_path):
    cfg = tiny_config(tmp_path, optimizer="sgd", weight_decay=0.01)
    network = model.build_model(cfg)
    trainer, _ = trainer_module.make_trainer(cfg, network)
    kernels = [layer.kernel.numpy() for layer in network.layers if hasattr(layer, "kernel")]
    expected = 0.5 * 0.01 * sum(float((kernel.astype(np.float64) ** 2).sum()) for kernel in kernels)
    assert float(trainer._decay_term()) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------------------------
def one_sgd_step_changes(tmp_path, stage_multiplier):
    cfg = tiny_config(tmp_path, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                      learning_rate=0.01, stage_lr_multiplier=stage_multiplier)
    network = model.build_model(cfg)
    trainer, _ = trainer_module.make_trainer(cfg, network)
    before = {v.path: v.numpy().copy() for v in network.trainable_variables}
    trainer.fit(dataset.synthetic_dataset(cfg, "train", True, batches=1), epochs=1,
                steps_per_epoch=1, verbose=0, shuffle=False)
    return {v.path: v.numpy() - before[v.path] for v in network.trainable_variables}


def test_later_stages_get_the_learning_rate_multiplier(tmp_path):
    plain = one_sgd_step_changes(tmp_path, 1.0)
    boosted = one_sgd_step_changes(tmp_path, 4.0)
    stage2 = [path for path in plain if "stage2" in path]
    stage1 = [path for path in plain if "stage2" not in path]
    assert stage2 and stage1
    # The changes are differences of float32 weights, hence the absolute tolerance.
    for path in stage2:
        np.testing.assert_allclose(boosted[path], 4.0 * plain[path], rtol=1e-3, atol=2e-7)
        assert np.abs(boosted[path]).sum() == pytest.approx(4 * np.abs(plain[path]).sum(), 1e-3)
    for path in stage1:
        np.testing.assert_allclose(boosted[path], plain[path], rtol=1e-3, atol=2e-7)
    assert any(np.abs(plain[path]).max() > 0 for path in stage2)


def test_learning_rate_factor_and_step_decay(tmp_path):
    cfg = tiny_config(tmp_path, stage_lr_multiplier=4.0, learning_rate=0.1, lr_decay_steps=10,
                      lr_decay_rate=0.5)
    network = model.build_model(cfg)
    factors = {v.path: trainer_module.learning_rate_factor(v, cfg)
               for v in network.trainable_variables}
    assert factors["Mconv1_stage2_L1/kernel"] == 4.0
    assert factors["conv5_1_CPM_L1/kernel"] == 1.0
    assert factors["conv1_1/bias"] == cfg.bias_lr_multiplier
    schedule = trainer_module.make_schedule(cfg)
    rates = [float(schedule(step)) for step in (0, 9, 10, 25)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.05, 0.025], rtol=1e-6)
    schedule.factor.assign(1.0 / 3.0)
    assert float(schedule(0)) == pytest.approx(0.1 / 3.0)


def test_anneal_factor_falls_linearly_to_zero_over_the_budgets_end():
    # With half the budget annealed: full rate to the middle, half at three quarters, 0 at the end.
    factors = [callbacks.anneal_factor(f, 0.5) for f in (0.0, 0.5, 0.75, 0.9, 1.0, 1.2)]
    np.testing.assert_allclose(factors, [1.0, 1.0, 0.5, 0.2, 0.0, 0.0], atol=1e-12)
    assert callbacks.anneal_factor(0.99, 0.0) == 1.0  # off


class WeightsAfterEachStep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([v.numpy().copy() for v in self.model.network.trainable_variables])


def test_weight_averages_follow_the_momentum_and_swap_in_and_out_exactly(tmp_path):
    cfg = tiny_config(tmp_path, optimizer="adam", learning_rate=1e-2, ema_momentum=0.75)
    trainer, _ = trainer_module.make_trainer(cfg, model.build_model(cfg))
    recorder = WeightsAfterEachStep()
    trainer.fit(dataset.synthetic_dataset(cfg, "train", True, batches=3), epochs=1,
                steps_per_epoch=3, verbose=0, shuffle=False, callbacks=[recorder])
    # The first step copies the weights; each later one moves a quarter of the way to them.
    first, second, third = recorder.steps
    expected = [0.75 * (0.75 * a + 0.25 * b) + 0.25 * c for a, b, c in zip(first, second, third)]
    variables = trainer.network.trainable_variables
    # Keras' fit would have written the averages into the weights at its end; they stay.
    for variable, value in zip(variables, third):
        np.testing.assert_array_equal(variable.numpy(), value)
    with trainer_module.averaged_weights(trainer):
        for variable, value in zip(variables, expected):
            np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-7)
        assert not np.array_equal(variables[0].numpy(), third[0])
    for variable, value in zip(variables, third):
        np.testing.assert_array_equal(variable.numpy(), value)
    with pytest.raises(ValueError, match="ema_momentum"):
        trainer_module.make_optimizer(dataclasses.replace(cfg, ema_momentum=1.0), 0.1)


def test_averaging_off_leaves_the_weights_in_the_block(tmp_path):
    cfg = tiny_config(tmp_path, optimizer="adam")
    trainer, _ = trainer_module.make_trainer(cfg, model.build_model(cfg))
    trainer.fit(dataset.synthetic_dataset(cfg, "train", True, batches=1), epochs=1,
                steps_per_epoch=1, verbose=0, shuffle=False)
    before = [v.numpy() for v in trainer.network.trainable_variables]
    with trainer_module.averaged_weights(trainer):
        after = [v.numpy() for v in trainer.network.trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_saved_networks_hold_the_averages_and_the_state_file_the_weights(tmp_path):
    cfg = tiny_config(tmp_path, optimizer="adam", learning_rate=1e-2, ema_momentum=0.9,
                      steps_per_epoch=3, epochs=1)
    summary = train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    assert summary["step"] == 3
    model_dir, _ = config.run_directories(cfg)
    restored, _ = trainer_module.make_trainer(cfg, model.build_model(cfg))
    checkpoints.restore_checkpoint(restored, checkpoints.read_run_state(model_dir), model_dir)
    weights = [v.numpy() for v in restored.network.trainable_variables]
    with trainer_module.averaged_weights(restored):
        averages = [v.numpy() for v in restored.network.trainable_variables]
    assert not np.array_equal(weights[0], averages[0])
    for name in ("last.keras", "best.keras"):
        saved, _ = model.load_checkpoint(os.path.join(model_dir, name))
        for variable, average in zip(saved.trainable_variables, averages):
            np.testing.assert_array_equal(variable.numpy(), average)


def test_time_budget_anneals_the_schedule_and_then_stops(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, learning_rate=0.1, lr_decay_steps=0)
    schedule = trainer_module.make_schedule(cfg)
    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    state = checkpoints.RunState()
    budget = callbacks.TimeBudget(state, 1.0, None, schedule, anneal_fraction=0.4)
    budget.set_model(type("Stub", (), {"stop_training": False})())
    rates = []
    for elapsed in (0.0, 30.0, 48.0, 54.0, 61.0):  # seconds of the one-minute budget
        clock[0] = 100.0 + elapsed
        budget.on_train_batch_end(0)
        rates.append(float(schedule(0)))
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.05, 0.025, 0.0], atol=1e-7)
    assert state.stop_reason == "time" and budget.model.stop_training


def test_fit_phases_finish_an_interrupted_epoch_first():
    assert train.fit_phases(checkpoints.RunState(step=0), 3, 2) == [(0, 2, 3)]
    assert train.fit_phases(checkpoints.RunState(step=7), 3, 4) == [(2, 3, 2), (3, 4, 3)]
    assert train.fit_phases(checkpoints.RunState(step=6), 3, 4) == [(2, 4, 3)]
    assert train.fit_phases(checkpoints.RunState(step=12), 3, 4) == []


def test_map_panel_shows_image_and_four_maps():
    image = np.full((16, 16, 3), 100.0, np.float32)
    heatmaps = np.zeros((4, 4, 15), np.float32)
    heatmaps[1, 2, 0] = 1.0
    pafs = np.zeros((4, 4, 30), np.float32)
    panel = callbacks.map_panel(image, heatmaps, np.zeros_like(heatmaps), pafs, pafs)
    assert panel.shape == (16, 80, 3) and panel.dtype == np.uint8
    np.testing.assert_array_equal(panel[:, :16], 100)
    target_tile, predicted_tile = panel[:, 16:32], panel[:, 32:48]
    # The peak cell (row 1, col 2) covers pixels 4..7 x 8..11 and looks different there.
    assert not np.array_equal(target_tile[5, 9], predicted_tile[5, 9])
    np.testing.assert_array_equal(target_tile[14, 1], predicted_tile[14, 1])


# ---------------------------------------------------------------------------------------------
# Whole runs in this process (synthetic data)
# ---------------------------------------------------------------------------------------------
def read_csv(path):
    with open(path, "r", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def event_tags(directory):
    import tensorflow as tf

    tags = set()
    for name in os.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_run_writes_checkpoints_logs_and_resumes_mid_epoch(tmp_path):
    cfg = tiny_config(tmp_path, steps_per_epoch=3, epochs=2, max_train_minutes=1e-9)
    first = train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    # The time budget stops the run after its first step, in the middle of epoch 0.
    assert (first["step"], first["stop_reason"], first["optimizer_iterations"]) == (1, "time", 1)
    model_dir, log_dir = config.run_directories(cfg)
    for name in ("last.keras", "best.keras", "config.json", "last.json",
                 "state-000000001.weights.h5"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    assert not [name for name in os.listdir(model_dir) if name.startswith(".tmp-")]
    assert {"loss", "learning_rate"} <= event_tags(os.path.join(log_dir, "steps"))
    with pytest.raises(checkpoints.TrainError, match="--resume"):
        train.main(cfg, dataset_fn=dataset.synthetic_dataset)

    resumed_cfg = dataclasses.replace(cfg, resume=True, max_train_minutes=0.0)
    second = train.main(resumed_cfg, dataset_fn=dataset.synthetic_dataset)
    assert second["resumed"] and second["stop_reason"] == "finished"
    # 2 steps finish epoch 0, then epoch 1: 6 steps in all, the optimizer state included.
    assert (second["steps_this_run"], second["step"], second["optimizer_iterations"]) == (5, 6, 6)
    rows = read_csv(os.path.join(log_dir, "training.csv"))
    assert [row["epoch"] for row in rows] == ["0", "0", "1"]
    assert {"stage2_heatmap_loss", "val_stage1_paf_loss", "learning_rate"} <= set(rows[0])
    state = checkpoints.read_run_state(model_dir)
    assert (state.step, state.epoch, state.state_file) == (6, 2, "state-000000006.weights.h5")
    assert sorted(name for name in os.listdir(model_dir) if name.startswith("state-")) == \
        ["state-000000006.weights.h5"]
    network, loaded_cfg = model.load_checkpoint(os.path.join(model_dir, "last.keras"))
    assert loaded_cfg.stages == cfg.stages and len(network.outputs) == 4
    assert os.path.isfile(os.path.join(log_dir, "loss_curve.png"))
    assert "maps" in event_tags(os.path.join(log_dir, "steps"))


def nan_after(good_batches):
    """A dataset_fn whose training stream turns to NaN targets after `good_batches` batches
    (the images are uint8, which cannot hold a NaN)."""
    def dataset_fn(cfg, split, training, shard=None, input_context=None):
        batch_data = dataset.synthetic_dataset(cfg, split, training, input_context=input_context)
        if not training:
            return batch_data
        poison = batch_data.map(lambda images, targets: (
            images, dict(targets, heatmaps=targets["heatmaps"] * np.nan)))
        return batch_data.take(good_batches).concatenate(poison)
    return dataset_fn


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, caplog, monkeypatch):
    run_eagerly(monkeypatch)
    cfg = tiny_config(tmp_path, epochs=5)
    summary = train.main(cfg, dataset_fn=nan_after(2))
    assert summary["stop_reason"] == "nan"
    assert "NaN" in caplog.text
    model_dir, _ = config.run_directories(cfg)
    assert checkpoints.read_run_state(model_dir).step == 2  # the epoch-end checkpoint before the NaN
    network, _ = model.load_checkpoint(os.path.join(model_dir, "last.keras"))
    assert all(np.isfinite(weight).all() for weight in network.get_weights())


# ---------------------------------------------------------------------------------------------
# Subprocesses: the real command line and data pipeline, SIGKILL, distribution
# ---------------------------------------------------------------------------------------------
def write_tiny_records(root, counts=(("train", 6), ("val", 2))):
    """JPEGs with one person each and their records; returns (data_dir, records_dir)."""
    rng = np.random.default_rng(0)
    data_dir, records_dir = os.path.join(root, "data"), os.path.join(root, "data", "records")
    os.makedirs(os.path.join(data_dir, "images"))
    os.makedirs(records_dir)
    for split, count in counts:
        lines = []
        for index in range(count):
            image = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
            relative = f"images/{split}{index}.jpg"
            cv2.imwrite(os.path.join(data_dir, relative), image)
            points = np.stack([rng.uniform(8, 32, 14), rng.uniform(6, 42, 14), np.ones(14)], 1)
            lines.append(json.dumps({
                "image_id": f"{split}{index}", "image_path": relative, "width": 40, "height": 48,
                "people": [{"name": "human1", "keypoints": points.round(1).tolist(),
                            "box": [4.0, 2.0, 36.0, 46.0]}]}))
        with open(os.path.join(records_dir, f"{split}.jsonl"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    return data_dir, records_dir


def test_sigkill_then_resume_continues_where_the_checkpoint_stopped(tmp_path, monkeypatch,
                                                                    caplog):
    data_dir, records_dir = write_tiny_records(str(tmp_path))
    flags = TINY_FLAGS + ["--data_dir", data_dir, "--records_dir", records_dir,
                          "--models_dir", str(tmp_path / "models"),
                          "--logs_dir", str(tmp_path / "logs"), "--run_name", "killed"]
    sidecar = tmp_path / "models" / "killed" / "last.json"
    process = subprocess.Popen([sys.executable, "train.py", *flags, "--epochs", "1000"],
                               cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    try:
        while not (sidecar.exists() and json.loads(sidecar.read_text())["step"] >= 4):
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 4 in time"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = json.loads(sidecar.read_text())
    epochs = saved["epoch"] + 1
    # The resume runs in this process, eagerly: the killed process's files are what is under
    # test, and a second TensorFlow start and tracing would be most of the test's time.
    run_eagerly(monkeypatch)
    cfg = train.parse_arguments([*flags, "--epochs", str(epochs), "--resume"])
    with caplog.at_level(logging.INFO, logger="train"):
        summary = train.main(cfg)
    assert f"from epoch {saved['epoch']} step {saved['step']} " in caplog.text
    # Iterations counted from the restored optimizer, not from zero.
    assert summary["resumed"] and summary["step"] == summary["optimizer_iterations"] == 2 * epochs
    assert summary["steps_this_run"] == 2 * epochs - saved["step"]


MIRRORED_SCRIPT = """
import json, sys
import tensorflow as tf
device = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(device, [tf.config.LogicalDeviceConfiguration()] * 2)
import config, dataset, train
cfg = config.make_config("tiny", strategy=sys.argv[2], epochs=2, batch_size=4,
                         models_dir=sys.argv[1] + "/models", logs_dir=sys.argv[1] + "/logs",
                         run_name="distributed",
                         **{key: tuple(value) if isinstance(value, list) else value
                            for key, value in json.loads(sys.argv[3]).items()})
print(json.dumps(train.main(cfg, dataset_fn=dataset.synthetic_dataset)))
"""


def tiny_overrides(**extra):
    values = {key: value for key, value in TINY.items() if key != "batch_size"}
    return json.dumps(dict(values, **extra))


def test_mirrored_strategy_over_two_logical_cpus_trains(tmp_path):
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path), "mirrored",
                             tiny_overrides()], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = last_json_line(result.stdout)
    assert summary["replicas"] == 2 and summary["step"] == 4
    assert summary["stop_reason"] == "finished"
    rows = read_csv(str(tmp_path / "logs" / "distributed" / "training.csv"))
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for handle in sockets:
        handle.bind(("127.0.0.1", 0))
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


WORKER_SCRIPT = MIRRORED_SCRIPT.replace(
    'device = tf.config.list_physical_devices("CPU")[0]\n'
    'tf.config.set_logical_device_configuration(device, '
    '[tf.config.LogicalDeviceConfiguration()] * 2)\n', "")


def run_two_workers(tmp_path, script, *arguments):
    """Run `script` as two workers of one local cluster; [(returncode, stdout, stderr)] each."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes, logs = [], []
    for index in range(2):
        # Files rather than pipes, so neither worker can block on a full pipe.
        logs.append((open(tmp_path / f"worker{index}.out", "w+"),
                     open(tmp_path / f"worker{index}.err", "w+")))
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, "-c", script, *arguments], cwd=ROOT,
            env=subprocess_env(TF_CONFIG=tf_config), stdout=logs[-1][0], stderr=logs[-1][1],
            text=True))
    outputs = []
    try:
        for process, (stdout, stderr) in zip(processes, logs):
            process.wait(timeout=SUBPROCESS_TIMEOUT)
            stdout.seek(0)
            stderr.seek(0)
            outputs.append((process.returncode, stdout.read(), stderr.read()))
    finally:
        for process, handles in zip(processes, logs):
            if process.poll() is None:
                process.kill()
            for handle in handles:
                handle.close()
    for returncode, _, stderr in outputs:
        assert returncode == 0, stderr[-3000:]
    return outputs


COLLECTIVE_SCRIPT = """
import json, os
import trainer
strategy = trainer.make_strategy("multiworker")
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
print(json.dumps({"largest": trainer.largest_over_workers(strategy, [1.5, 4.0][index]),
                  "any_second": trainer.any_worker(strategy, index == 1),
                  "any_none": trainer.any_worker(strategy, False)}))
"""


def test_workers_agree_on_the_largest_value_and_on_any_flag(tmp_path):
    # The time budget stops and anneals on these, so each worker must get the others' values.
    for _, stdout, _ in run_two_workers(tmp_path, COLLECTIVE_SCRIPT):
        assert last_json_line(stdout) == {"largest": 4.0, "any_second": True, "any_none": False}


def test_two_workers_train_together_and_end_cleanly(tmp_path):
    # A budget that never runs out still takes the workers' largest elapsed time every batch.
    overrides = tiny_overrides(max_train_minutes=600, lr_anneal_fraction=0.5)
    outputs = run_two_workers(tmp_path, WORKER_SCRIPT, str(tmp_path), "multiworker", overrides)
    chief, other = (last_json_line(stdout) for _, stdout, _ in outputs)
    assert (chief["chief"], other["chief"]) == (True, False)
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["step"] == other["step"] == chief["optimizer_iterations"] == 4
    assert chief["best_loss"] == pytest.approx(other["best_loss"])
    # Only the chief wrote into models/ and logs/.
    assert checkpoints.read_run_state(str(tmp_path / "models" / "distributed")).step == 4
    assert sorted(os.listdir(tmp_path / "models")) == ["distributed"]


# ---------------------------------------------------------------------------------------------
# The paper recipe at full size
# ---------------------------------------------------------------------------------------------
def imagenet_scale_backbone(network, seed=0):
    """Give conv1_1..conv4_2 He-normal kernels and zero biases: activations with the spread
    real ImageNet VGG19 has (tens at conv4_2 on mean-subtracted 0..255 pixels)."""
    rng = np.random.default_rng(seed)
    for name in model.BACKBONE_LAYER_NAMES:
        layer = network.get_layer(name)
        kernel, bias = layer.get_weights()
        std = np.sqrt(2.0 / np.prod(kernel.shape[:3]))
        layer.set_weights([rng.normal(0, std, kernel.shape).astype(np.float32),
                           np.zeros_like(bias)])


def test_paper_recipe_first_update_is_small_at_368():
    # The paper preset as users run it (368 x 368, SGD at 4e-5 with the 4x/2x multipliers,
    # weight decay, N(0, 0.01) heads after a pretrained VGG19), one step of batch 1 on one
    # rendered person. With ImageNet-scale inputs the first update moves stage 1's heatmap
    # output layer by ~1% of its norm and the run diverges within a few steps
    # (benchmarks/bench_recipe.py); with the original's (BGR - 128) / 256 it moves ~0.004%.
    # The size must be the real one: the summed loss's gradient grows with the 46 x 46 grid.
    import keras

    import data_generator

    cfg = config.make_config("paper", batch_size=1)
    assert cfg.input_size == 368
    keras.utils.set_random_seed(0)
    network = model.build_model(dataclasses.replace(cfg, backbone_weights="imagenet"))
    imagenet_scale_backbone(network)
    trainer, _ = trainer_module.make_trainer(cfg, network)
    grid = cfg.input_size // cfg.stride
    person = np.zeros((1, config.NUM_JOINTS, 3))
    person[0, :, :2] = np.random.default_rng(1).uniform(80, 290, (config.NUM_JOINTS, 2))
    person[0, :, 2] = config.VISIBLE
    heatmaps, pafs = data_generator.render_targets(person, (grid, grid), cfg.stride,
                                                   cfg.heatmap_sigma, cfg.paf_width)
    targets = {"heatmaps": heatmaps[None], "pafs": pafs[None],
               "mask": np.ones((1, grid, grid, 1), np.float32)}
    images = np.random.default_rng(2).uniform(0, 255, (1, 368, 368, 3)).astype(np.float32)
    probe = network.get_layer("conv5_5_CPM_L2").kernel
    before = probe.numpy().copy()
    logs = trainer.train_on_batch(images, targets, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["nonfinite_steps"] == 0
    change = np.linalg.norm(probe.numpy() - before) / np.linalg.norm(before)
    assert 0 < change < 1e-3, f"first update moved the heatmap head by {change:.2e} of its norm"


# ---------------------------------------------------------------------------------------------
# Expected failures: one line, exit status 2, nothing lost
# ---------------------------------------------------------------------------------------------
def run_cli(flags, timeout=SUBPROCESS_TIMEOUT):
    return subprocess.run([sys.executable, "train.py", *flags], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr):
    """The lines of stderr that are not TensorFlow's start-up noise."""
    noise = ("WARNING: All log messages", "I0000", "oneDNN", "cpu_feature_guard", "To enable",
             "E0000", "W0000")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(noise)
            and "rebuild TensorFlow" not in line]


def test_an_unknown_pipeline_or_a_numpy_service_is_refused_before_the_run_starts(tmp_path):
    refused = ((dict(pipeline="opencv"), "--pipeline must be one of tf, numpy"),
               (dict(pipeline="numpy", data_service_address="grpc://host:5050"),
                "--data_service_address needs --pipeline tf"),
               (dict(intra_op_threads=-2), "--intra_op_threads must be -1"))
    for overrides, message in refused:
        with pytest.raises(checkpoints.TrainError, match=message):
            train.main(tiny_config(tmp_path, **overrides))
    assert not (tmp_path / "models").exists()


def test_cli_refuses_missing_records_and_an_existing_run_in_one_line(tmp_path):
    flags = TINY_FLAGS + ["--records_dir", str(tmp_path / "nothing"), "--models_dir",
                          str(tmp_path / "models"), "--logs_dir", str(tmp_path / "logs")]
    result = run_cli(flags)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ")
    assert f"{tmp_path / 'nothing'}/train.jsonl: no " in lines[0]
    assert lines[0].endswith("run pre-process.py first")
    (tmp_path / "models" / "tiny").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models" / "tiny" / "state-000000002.weights.h5").write_bytes(b"x")
    (tmp_path / "models" / "tiny" / "last.json").write_text(
        json.dumps({"step": 2, "state_file": "state-000000002.weights.h5"}))
    result = run_cli(flags)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "already holds run 'tiny' (step 2)" in lines[0]
    assert "--resume" in lines[0]


def test_resume_refuses_a_changed_architecture_field_and_keeps_the_run(tmp_path, monkeypatch):
    run_eagerly(monkeypatch)
    cfg = tiny_config(tmp_path, batch_norm=True, epochs=1)
    train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    model_dir, _ = config.run_directories(cfg)
    before = {name: os.path.getmtime(os.path.join(model_dir, name))
              for name in os.listdir(model_dir)}
    changed = dataclasses.replace(cfg, resume=True, batch_norm=False)
    with pytest.raises(checkpoints.TrainError, match=r"--batch_norm True -> False"):
        train.main(changed, dataset_fn=dataset.synthetic_dataset)
    after = {name: os.path.getmtime(os.path.join(model_dir, name))
             for name in os.listdir(model_dir)}
    assert after == before  # config.json, best.keras and the state are untouched
    # Inference and training-control fields may change on resume.
    allowed = dataclasses.replace(cfg, resume=True, epochs=2, scales=(1.0, 2.0))
    assert train.main(allowed, dataset_fn=dataset.synthetic_dataset)["resumed"]


def test_resume_treats_a_variable_keras_did_not_load_as_an_error(tmp_path, monkeypatch):
    run_eagerly(monkeypatch)
    cfg = tiny_config(tmp_path, batch_norm=True, epochs=1)
    train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    model_dir, _ = config.run_directories(cfg)
    # The saved config edited by hand: the state file no longer fits the network it describes.
    config.save_config(dataclasses.replace(cfg, batch_norm=False),
                       os.path.join(model_dir, "config.json"))
    resumed = dataclasses.replace(cfg, resume=True, batch_norm=False, epochs=2)
    with pytest.raises(model.CheckpointError, match="not loaded"):
        train.main(resumed, dataset_fn=dataset.synthetic_dataset)


def test_full_disk_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run_eagerly(monkeypatch)
    cfg = tiny_config(tmp_path, epochs=1)
    train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    model_dir, _ = config.run_directories(cfg)
    good = checkpoints.read_run_state(model_dir)
    kept = {name: (tmp_path / "models" / "tiny" / name).read_bytes()
            for name in ("last.json", "last.keras", good.state_file)}

    class Usage:
        free = 1000  # bytes: far less than a checkpoint

    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: Usage())
    more = dataclasses.replace(cfg, resume=True, epochs=2)
    with pytest.raises(checkpoints.TrainError, match="MB free, a checkpoint needs about"):
        train.main(more, dataset_fn=dataset.synthetic_dataset)
    for name, content in kept.items():
        assert (tmp_path / "models" / "tiny" / name).read_bytes() == content
    monkeypatch.undo()
    run_eagerly(monkeypatch)

    # A write that fails half-way (ENOSPC from the file system) is reported the same way.
    def no_space(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer_module.PoseTrainer, "save_weights", no_space)
    with pytest.raises(checkpoints.TrainError, match="No space left on device"):
        train.main(more, dataset_fn=dataset.synthetic_dataset)
    assert sorted(os.listdir(model_dir)) == sorted(
        ["best.keras", "config.json", "last.json", "last.keras", good.state_file])
    assert checkpoints.read_run_state(model_dir).step == good.step


def recording(calls):
    """dataset.synthetic_dataset that notes the seed of every training stream it makes."""
    def dataset_fn(cfg, split, training, shard=None, input_context=None):
        if training:
            calls.append(cfg.seed)
        return dataset.synthetic_dataset(cfg, split, training, input_context=input_context)
    return dataset_fn


def run_eagerly(patch):
    """Train without tracing the step functions: in a test of what a run saves and restores,
    tracing (seconds per run) is most of the time and none of what is under test."""
    compile_traced = trainer_module.PoseTrainer.compile

    def compile_eagerly(self, *args, **kwargs):
        compile_traced(self, *args, **dict(kwargs, run_eagerly=True))
    patch.setattr(trainer_module.PoseTrainer, "compile", compile_eagerly)


def test_a_kill_at_any_file_landing_leaves_a_run_that_resumes(tmp_path, monkeypatch):
    """A SIGKILL stand-in after the 1st, 2nd, ... file a run renames into place (every moment
    the saved state changes): the run left behind always resumes from its last complete
    checkpoint, reshuffled with seed + step as documented, and goes on to the end."""
    run_eagerly(monkeypatch)
    cfg = tiny_config(tmp_path, epochs=1)
    train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    model_dir, _ = config.run_directories(cfg)
    kill_point, finished, streams = 1, False, 0
    while not finished:
        before = checkpoints.read_run_state(model_dir)
        more = dataclasses.replace(cfg, resume=True, epochs=before.epoch + 1)
        seeds = []
        with monkeypatch.context() as patch:
            kill_after_renames(patch, kill_point)
            try:
                train.main(more, dataset_fn=recording(seeds))
                finished = True
            except SimulatedKill:
                pass
        after = checkpoints.read_run_state(model_dir)  # names a complete state file
        assert after.step in (before.step, before.step + more.steps_per_epoch), kill_point
        # A kill before the datasets are made leaves no stream to check.
        assert seeds[:1] in ([], [cfg.seed + before.step])
        streams += len(seeds[:1])
        kill_point += 1
        assert kill_point < 20, "a run renames more files than a checkpoint has"
    assert streams >= 2
    resumed = train.main(dataclasses.replace(cfg, resume=True, epochs=after.epoch + 1),
                         dataset_fn=dataset.synthetic_dataset)
    assert resumed["resumed"] and resumed["step"] == after.step + cfg.steps_per_epoch
    assert resumed["optimizer_iterations"] == resumed["step"]


def test_a_corrupt_checkpoint_or_run_state_is_one_clear_error(tmp_path, monkeypatch):
    run_eagerly(monkeypatch)
    cfg = tiny_config(tmp_path, epochs=1)
    train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    model_dir, _ = config.run_directories(cfg)
    state = checkpoints.read_run_state(model_dir)
    state_path = os.path.join(model_dir, state.state_file)
    content = open(state_path, "rb").read()
    more = dataclasses.replace(cfg, resume=True, epochs=2)
    with open(state_path, "wb") as handle:
        handle.write(content[:len(content) // 2])
    with pytest.raises(model.CheckpointError, match="unreadable or truncated") as error:
        train.main(more, dataset_fn=dataset.synthetic_dataset)
    assert state.state_file in str(error.value) and "\n" not in str(error.value)
    with open(state_path, "wb") as handle:
        handle.write(content)
    sidecar = os.path.join(model_dir, "last.json")
    with open(sidecar, "w", encoding="utf-8") as handle:
        handle.write('{"step": 2, "epo')
    with pytest.raises(checkpoints.TrainError, match="unreadable run state") as error:
        train.main(more, dataset_fn=dataset.synthetic_dataset)
    assert "last.json" in str(error.value) and "\n" not in str(error.value)


def test_an_unwritable_logs_dir_fails_before_anything_is_written(tmp_path):
    """A logs_dir under a regular file cannot be created, even by root (chmod would not stop
    root): the run stops with the path named and leaves no model folder half made."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    cfg = tiny_config(tmp_path, logs_dir=str(tmp_path / "blocker" / "logs"))
    with pytest.raises(OSError) as error:
        train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    assert "blocker" in str(error.value)
    model_dir, _ = config.run_directories(cfg)
    assert not os.path.exists(os.path.join(model_dir, "last.json"))


def test_a_data_service_dispatcher_that_is_not_there_is_one_line(tmp_path):
    data_dir, records_dir = write_tiny_records(str(tmp_path))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    cfg = tiny_config(tmp_path, data_dir=data_dir, records_dir=records_dir,
                      data_service_address=f"grpc://localhost:{port}")
    started = time.monotonic()
    with pytest.raises(checkpoints.TrainError, match="no dispatcher answers there") as error:
        train.main(cfg)
    assert time.monotonic() - started < 30 and "data_service.py dispatcher" in str(error.value)
    assert not os.path.exists(config.run_directories(cfg)[0])
    with pytest.raises(checkpoints.TrainError, match="expected grpc://HOST:PORT"):
        train.main(dataclasses.replace(cfg, data_service_address="grpc://localhost"))
