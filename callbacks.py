"""The Keras callbacks of train.py: NaN guard, time budget, checkpoints, learning-rate and map
images for TensorBoard, and the loss-curve plot.

make_callbacks(run, monitor, samples) gives them in the order that matters: the guard first (a
non-finite step writes no checkpoint), then the budget, the checkpoints, then the logs.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time

import cv2
import keras
import matplotlib
import numpy as np
import tensorflow as tf

matplotlib.use("Agg")  # Figures are written to files; no display is needed or wanted.
import matplotlib.pyplot as plt  # noqa: E402

import utils  # noqa: E402
from checkpoints import (_all_finite, check_free_space, read_run_state, save_checkpoint,
                         save_network)
from trainer import averaged_weights, largest_over_workers
from config import NUM_JOINTS

LOGGER = logging.getLogger("train")
# ReduceLROnPlateau divides the learning rate by this (the config's "lr/3").
PLATEAU_DIVISOR = 3.0


# ---------------------------------------------------------------------------------------------
# TensorBoard images
# ---------------------------------------------------------------------------------------------
def _colour_map(values, size):
    """(rows, cols) values in 0..1 -> (size, size, 3) uint8 RGB jet colours (nearest upsample)."""
    scaled = np.clip(np.nan_to_num(values), 0.0, 1.0)
    coloured = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return cv2.resize(coloured, (size, size), interpolation=cv2.INTER_NEAREST)


def map_panel(image, target_heatmaps, predicted_heatmaps, target_pafs, predicted_pafs):
    """One uint8 RGB strip (S, 5*S, 3): image | target / predicted heatmaps | target / predicted
    PAFs, maps blended over the image.

    image (S, S, 3) RGB 0..255; heatmaps (g, g, 15): the max over the 14 joints is drawn;
    pafs (g, g, 30): the max over limbs of the vector length |(x, y)| is drawn.
    """
    size = image.shape[0]
    picture = np.clip(image, 0, 255).astype(np.float32)

    def joints(maps):
        return maps[..., :NUM_JOINTS].max(axis=-1)

    def limbs(maps):
        return np.hypot(maps[..., 0::2], maps[..., 1::2]).max(axis=-1)

    tiles = [picture.astype(np.uint8)]
    for values in (joints(target_heatmaps), joints(predicted_heatmaps), limbs(target_pafs),
                   limbs(predicted_pafs)):
        tiles.append((0.4 * picture + 0.6 * _colour_map(values, size)).astype(np.uint8))
    return np.concatenate(tiles, axis=1)


def write_loss_curve(csv_path, png_path):
    """Plot loss and val_loss per epoch from training.csv into png_path (atomically)."""
    with open(csv_path, "r", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(7, 4))
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            values = [float(row[key]) if row.get(key) not in (None, "") else math.nan
                      for row in rows]
            axis.plot(range(1, len(rows) + 1), values, marker="o", label=key)
    axis.set_xlabel("epoch (CSV row)")
    axis.set_ylabel("loss (sum over stages, per image)")
    axis.set_yscale("log")
    axis.legend()
    axis.grid(True, alpha=0.3)
    with utils.atomic_path(png_path) as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------
class NanGuard(keras.callbacks.Callback):
    """Stops at the first non-finite step; the Checkpointer then writes nothing more."""

    def __init__(self, state, model_dir):
        super().__init__()
        self.state, self.model_dir = state, model_dir

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = float(logs.get("loss", 0.0))
        if np.isfinite(loss) and float(logs.get("nonfinite_steps", 0.0)) == 0.0:
            return
        self.state.stop_reason = "nan"
        self.model.stop_training = True
        LOGGER.error("the loss or its gradients became NaN/inf at step %d; that update was "
                     "dropped and training stopped. The last good checkpoint is %s (step %s). "
                     "Lower --learning_rate or check the data, then continue with --resume.",
                     self.state.step + 1, os.path.join(self.model_dir, "last.keras"),
                     self.state_step_on_disk())

    def state_step_on_disk(self):
        saved = read_run_state(self.model_dir) if os.path.isdir(self.model_dir) else None
        return saved.step if saved else "none yet"

def anneal_factor(elapsed_fraction, anneal_fraction):
    """The learning-rate factor at `elapsed_fraction` (0..1) of a time budget: 1 until the last
    `anneal_fraction` of it, then linearly down to 0 at its end (anneal_fraction 0: always 1).

    A run stopped by a time budget otherwise ends at full learning rate, where Adam's steps
    still bounce around the minimum; spending the end of the budget at a falling rate settles
    it (docs/training.md, Time budgets).
    """
    if anneal_fraction <= 0.0:
        return 1.0
    remaining = 1.0 - float(elapsed_fraction)
    return float(min(1.0, max(0.0, remaining / anneal_fraction)))


class TimeBudget(keras.callbacks.Callback):
    """Stops every worker together once max_train_minutes have passed (0: no limit), and over the
    budget's last lr_anneal_fraction lowers the learning rate linearly to zero (anneal_factor).

    The budget is this invocation's: a --resume gets max_train_minutes more, and its anneal
    starts from full learning rate again. Workers use the largest of their elapsed times, so
    they agree both on stopping and on the learning rate.
    """

    def __init__(self, state, minutes, strategy, schedule=None, anneal_fraction=0.0):
        super().__init__()
        self.state, self.minutes, self.strategy = state, minutes, strategy
        self.schedule, self.anneal_fraction = schedule, float(anneal_fraction)
        self.started = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if self.minutes <= 0:
            return
        elapsed = largest_over_workers(self.strategy, time.monotonic() - self.started)
        fraction = elapsed / (self.minutes * 60.0)
        if self.schedule is not None and self.anneal_fraction > 0.0:
            self.schedule.anneal.assign(anneal_factor(fraction, self.anneal_fraction))
        if fraction > 1.0:
            self.state.stop_reason = self.state.stop_reason or "time"
            self.model.stop_training = True

class Checkpointer(keras.callbacks.Callback):
    """Counts steps; saves last (every N steps and at epoch ends) and best; runs
    ReduceLROnPlateau and early stopping with their counters kept in last.json."""

    def __init__(self, cfg, state, model_dir, schedule, steps_per_epoch, monitor):
        super().__init__()
        self.cfg, self.state, self.model_dir = cfg, state, model_dir
        self.schedule, self.steps_per_epoch = schedule, steps_per_epoch
        self.monitor = monitor
        self.every = int(cfg.checkpoint_every_steps)

    def on_train_batch_end(self, batch, logs=None):
        if self.state.stop_reason == "nan":
            return
        self.state.step += 1
        self.state.epoch = self.state.step // self.steps_per_epoch
        at_epoch_end = self.state.step % self.steps_per_epoch == 0
        if self.every > 0 and self.state.step % self.every == 0 and not at_epoch_end:
            save_checkpoint(self.model, self.state, self.model_dir, self.cfg)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.state.stop_reason == "nan" or not _all_finite(self.model.network):
            return
        check_free_space(self.model, self.model_dir)  # before best.keras, too
        value = float(logs.get(self.monitor, math.nan))
        improved = np.isfinite(value) and value < self.state.best_loss
        if improved:
            self.state.best_loss = value
            with averaged_weights(self.model):
                save_network(self.model.network, os.path.join(self.model_dir, "best.keras"),
                             self.cfg)
        if self.state.step % self.steps_per_epoch == 0:  # only whole epochs count
            self._plateau(improved)
        save_checkpoint(self.model, self.state, self.model_dir, self.cfg)

    def _plateau(self, improved):
        self.state.epochs_without_improvement = 0 if improved else \
            self.state.epochs_without_improvement + 1
        self.state.plateau_wait = 0 if improved else self.state.plateau_wait + 1
        if 0 < self.cfg.reduce_lr_patience <= self.state.plateau_wait:
            self.state.lr_factor /= PLATEAU_DIVISOR
            self.state.plateau_wait = 0
            self.schedule.factor.assign(self.state.lr_factor)
            LOGGER.info("no improvement of %s for %d epochs; learning rate x %.4g",
                        self.monitor, self.cfg.reduce_lr_patience, self.state.lr_factor)
        patience = self.cfg.early_stopping_patience
        if 0 < patience <= self.state.epochs_without_improvement:
            self.state.stop_reason = "early_stopping"
            self.model.stop_training = True

class AveragedValidation(keras.callbacks.Callback):
    """Validation measures the averaged weights (cfg.ema_momentum), the ones that best.keras
    and last.keras keep, so that the best checkpoint is chosen on what is saved."""

    def __init__(self):
        super().__init__()
        self.block = contextlib.ExitStack()

    def on_test_begin(self, logs=None):
        self.block.enter_context(averaged_weights(self.model))

    def on_test_end(self, logs=None):
        self.block.close()


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the current learning rate into the epoch logs (CSV and TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())

class MapImages(keras.callbacks.Callback):
    """Every N steps: predicted vs target maps of fixed samples as TensorBoard images, plus
    the running loss and learning rate as per-step scalars (every N/10 steps)."""

    def __init__(self, state, samples, log_dir, every):
        super().__init__()
        self.state, (self.images, self.targets) = state, samples
        self.every, self.scalar_every = max(1, every), max(1, every // 10)
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "steps"))

    def on_train_batch_end(self, batch, logs=None):
        step = self.state.step
        with self.writer.as_default(step=step):
            if step % self.scalar_every == 0 and logs:
                tf.summary.scalar("loss", float(logs.get("loss", math.nan)))
                tf.summary.scalar("learning_rate",
                                  float(self.model.optimizer.learning_rate.numpy()))
            if step % self.every == 0:
                self.write_images()

    def write_images(self):
        outputs = self.model.network(self.images, training=False)
        pafs, heatmaps = outputs[-2].numpy(), outputs[-1].numpy()
        panels = np.stack([
            map_panel(image, self.targets["heatmaps"][index], heatmaps[index],
                      self.targets["pafs"][index], pafs[index])
            for index, image in enumerate(self.images)])
        tf.summary.image("maps", panels, max_outputs=len(panels), description=(
            "image | target heatmaps | predicted heatmaps | target PAFs | predicted PAFs "
            "(final stage, max over joints / limbs)"))
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.flush()


def make_callbacks(run, monitor, samples):
    """The callback list in the order that matters: guard, budget, checkpoints, then logs."""
    cfg, state = run.cfg, run.state
    callbacks = [
        NanGuard(state, run.write_model_dir),
        TimeBudget(state, cfg.max_train_minutes, run.strategy, run.schedule,
                   cfg.lr_anneal_fraction),
        Checkpointer(cfg, state, run.write_model_dir, run.schedule, run.steps_per_epoch,
                     monitor),
        *([AveragedValidation()] if cfg.ema_momentum > 0.0 else []),
        LearningRateLogger(),
        keras.callbacks.CSVLogger(os.path.join(run.write_log_dir, "training.csv"),
                                  append=True),
        keras.callbacks.TensorBoard(log_dir=run.write_log_dir, update_freq="epoch",
                                    write_graph=False),
    ]
    if samples is not None and cfg.log_images_every > 0:
        callbacks.append(MapImages(state, samples, run.write_log_dir, cfg.log_images_every))
    return callbacks
