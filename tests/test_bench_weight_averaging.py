"""Tests of benchmarks/bench_weight_averaging.py: it writes a run's weights and their average
as two networks, and refuses a run trained without averaging."""

import os

import numpy as np
import pytest

import config
import dataset
import model
import train
from conftest import load_benchmark

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def tiny_run(tmp_path, ema_momentum):
    cfg = config.make_config("tiny", batch_norm=False, optimizer="adam", learning_rate=1e-2,
                             ema_momentum=ema_momentum, steps_per_epoch=3, epochs=1,
                             models_dir=str(tmp_path / "models"), logs_dir=str(tmp_path / "logs"),
                             run_name="averaged")
    train.main(cfg, dataset_fn=dataset.synthetic_dataset)
    return config.run_directories(cfg)[0]


def test_the_two_networks_are_the_weights_and_the_average_that_last_keras_holds(monkeypatch,
                                                                                tmp_path):
    bench = load_benchmark(monkeypatch, "bench_weight_averaging")
    model_dir = tiny_run(tmp_path, ema_momentum=0.8)
    step, momentum, paths = bench.write_networks(model_dir, str(tmp_path / "out"))
    assert (step, momentum) == (3, 0.8)
    raw, _ = model.load_checkpoint(paths["raw"])
    averaged, _ = model.load_checkpoint(paths["averaged"])
    last, _ = model.load_checkpoint(os.path.join(model_dir, "last.keras"))
    for mine, saved in zip(averaged.get_weights(), last.get_weights()):
        np.testing.assert_array_equal(mine, saved)
    differ = [not np.array_equal(a, b) for a, b in zip(raw.get_weights(), averaged.get_weights())]
    assert any(differ)


def test_a_run_without_averaging_is_refused_in_one_line(monkeypatch, tmp_path):
    bench = load_benchmark(monkeypatch, "bench_weight_averaging")
    model_dir = tiny_run(tmp_path, ema_momentum=0.0)
    with pytest.raises(SystemExit, match="without weight averaging"):
        bench.write_networks(model_dir, str(tmp_path / "out"))
