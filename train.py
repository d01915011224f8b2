"""Train the OpenPose network with Keras `fit` on the tf.data pipeline.

    python train.py --preset cpu                       # a small model on this CPU
    python train.py --preset paper --backbone_weights imagenet
    python train.py --preset cpu --resume              # continue models/cpu/ where it stopped

The pieces of a run (strategy, this worker's role and folders, run state, network, trainer,
schedule, step counts) are one ``Run``; ``train(cfg)`` opens it, builds it and fits it.
Messages go through ``logging`` (the CLI prints them as ``train.py: ...``); expected failures
raise ``TrainError`` or ``model.CheckpointError``, which the CLI prints as one line before
exiting with status 2.

Loss
    model.stage_losses (the original's Euclidean loss on every stage and both branches, summed;
    see model.masked_l2). Each stage's PAF and heatmap losses and the two branch totals are
    logged.

Optimiser
    SGD with momentum (paper), Adam or AdamW with a step-decay schedule
    lr = learning_rate * lr_decay_rate ** floor(step / lr_decay_steps) (times a plateau factor
    when --reduce_lr_patience is on). As in the original Caffe model, the learning rate of every
    variable in stages 2..T is multiplied by stage_lr_multiplier and that of biases by
    bias_lr_multiplier: the optimiser's per-variable update step is given a scaled learning
    rate, so the multipliers mean the same thing for SGD, Adam and AdamW. For SGD and Adam the
    weight decay is Caffe's L2 term on the kernels (0.5 * weight_decay * |w|^2 added to the loss,
    so it goes through momentum and the multipliers exactly like Caffe's decay); biases are not
    decayed (Caffe's decay_mult 0). AdamW uses its own decoupled decay, again on kernels only.

Safety
    A step whose loss or gradients are not finite is not applied (its gradients are zeroed),
    training stops with a message, and no checkpoint is written after it, so models/<run>/ keeps
    the last finite weights (with mixed float16 the loss-scale optimiser skips such steps
    itself and only a non-finite loss stops the run). max_train_minutes stops cleanly and saves.
    Before each checkpoint the free space is checked; a full disk (or a failed write) stops the
    run with one line and keeps the last good checkpoint.

Input pipeline
    data_generator.make_dataset makes the batches; with --pipeline tf (the default) every sample
    is made by TensorFlow graph ops (tf_pipeline.py) that tf.data runs on all of this host's
    cores. When those cores cannot keep the accelerators busy, other machines can make the
    training batches through tf.data service: start a dispatcher and workers with
    data_service.py, then point train.py at the dispatcher:

        python data_service.py dispatcher --port 5050                      # on any machine
        python data_service.py worker --dispatcher HOST:5050 --port 5051   # on each data machine
        python train.py --preset paper --data_service_address grpc://HOST:5050

    The workers read the images themselves, at the absolute paths the records give under
    --data_dir, so every worker must see them there (a shared file system) and run the same
    TensorFlow; the batches arrive in an order that depends on the workers' timing. Validation
    batches are still made by this host. See data_service.py.

Outputs (the chief worker only)
    models/<run>/last.keras      the network after the last checkpoint (Functional, no optimiser,
                                 the run's config stored inside: model.embed_config)
    models/<run>/best.keras      the network with the lowest validation loss so far
    models/<run>/config.json     the resolved config (model.load_checkpoint reads it)
    models/<run>/state-<step>.weights.h5  network + optimiser state for --resume
    models/<run>/last.json       epoch, step, best loss, plateau state and the state file; it is
                                 written last, atomically, so it always names a complete state
    logs/<run>/                  TensorBoard (train/, validation/, steps/ with per-step scalars
                                 and predicted-vs-target map images), training.csv,
                                 config.json, loss_curve.png
    Every file is written to a temporary name and renamed into place. Checkpoints are written at
    every epoch end and every checkpoint_every_steps steps, so a run killed with SIGKILL loses at
    most the steps since then.

Resume (--resume)
    Rebuilds the network from the config, restores weights and optimiser state (momenta,
    iteration count, hence the learning-rate schedule) from the state file named in last.json,
    and continues at the same global step: the rest of an interrupted epoch first, then whole
    epochs up to --epochs. The training stream is reshuffled with seed + step, so a resumed run
    does not replay the images it saw right after its start. Fields whose config role is
    architecture or training_state (config.py) must not change: a changed one is refused with
    one line naming it. Every variable must come from the state file (model.check_fully_loaded).

Distribution (--strategy auto|mirrored|multiworker; see make_strategy)
    The global batch (batch_size) is split across replicas by distribute_datasets_from_function:
    each worker's input pipeline reads its own shard of the records and batches
    batch_size / replicas per replica. Only the chief writes checkpoints and logs; other workers
    write theirs to temporary folders that are deleted (they must still save, since saving reads
    synchronised variables collectively).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings

import cv2
import keras
import matplotlib
import numpy as np
import tensorflow as tf

matplotlib.use("Agg")  # Figures are written to files; no display is needed or wanted.
import matplotlib.pyplot as plt  # noqa: E402

import config as config_module
import data_generator
import model as model_module
import utils
from config import NUM_JOINTS

LOGGER = logging.getLogger("train")
SIDECAR_NAME = "last.json"
STATE_PATTERN = "state-{step:09d}.weights.h5"
# Validation samples drawn in TensorBoard.
IMAGE_SAMPLES = 3
# ReduceLROnPlateau divides the learning rate by this (the config's "lr/3").
PLATEAU_DIVISOR = 3.0


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------
# masked_l2 and stage_losses live in model.py, written in keras.ops, so that any Keras backend
# (the JAX benchmarks on a GPU, too) trains with the same loss; train.py re-exports them.
masked_l2 = model_module.masked_l2
stage_losses = model_module.stage_losses


# ---------------------------------------------------------------------------------------------
# The training model: the network plus its loss, metrics and NaN guard
# ---------------------------------------------------------------------------------------------
class PoseTrainer(keras.Model):
    """Wraps the Functional network with OpenPose's multi-stage loss (see module docstring).

    Logs: loss, paf_loss, heatmap_loss, stage<t>_paf_loss, stage<t>_heatmap_loss and
    nonfinite_steps (steps of the epoch whose update was dropped as not finite).
    """

    def __init__(self, network, l2_decay=0.0, **kwargs):
        super().__init__(name="pose_trainer", **kwargs)
        self.network = network
        self.num_stages = len(network.outputs) // 2
        self.l2_decay = float(l2_decay)
        names = ["paf_loss", "heatmap_loss"] + [
            f"stage{stage}_{branch}_loss" for stage in range(1, self.num_stages + 1)
            for branch in ("paf", "heatmap")]
        self.part_trackers = [keras.metrics.Mean(name=name) for name in names]
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_steps")
        self.multi_worker = _multi_worker(tf.distribute.get_strategy())
        self.built = True

    def call(self, images, training=False):
        return self.network(images, training=training)

    def build_optimizer(self):
        """Create the optimiser's variables (momenta...) under the strategy's scope."""
        if not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.network.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras would pull a batch from the iterator and reduce it across replicas only to
        # create variables; the network is built already, and that reduction of a nested
        # (images, dict) batch fails under MultiWorkerMirroredStrategy. Only the
        # optimiser is left to build.
        self.build_optimizer()

    def _compute_losses(self, images, targets, training):
        outputs = self.network(images, training=training)
        per_stage = stage_losses(outputs, targets)
        paf_total = tf.add_n([paf for paf, _ in per_stage])
        heatmap_total = tf.add_n([heat for _, heat in per_stage])
        parts = [paf_total, heatmap_total] + [value for pair in per_stage for value in pair]
        return paf_total + heatmap_total, parts

    def _update_trackers(self, total, parts, batch):
        self._loss_tracker.update_state(total, sample_weight=batch)
        for tracker, value in zip(self.part_trackers, parts):
            tracker.update_state(value, sample_weight=batch)
        logs = {"loss": self._loss_tracker.result()}
        logs.update({tracker.name: tracker.result() for tracker in self.part_trackers})
        return logs

    def _reducible(self, logs):
        # Keras averages step outputs over workers with reduce(MEAN, axis=0), which fails
        # on scalars; shape (1,) values reduce to the same scalar mean.
        if not self.multi_worker:
            return logs
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}

    def _decay_term(self):
        kernels = [v for v in self.network.trainable_variables if _is_kernel(v)]
        if self.l2_decay <= 0 or not kernels:
            return 0.0
        return 0.5 * self.l2_decay * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])

    def train_step(self, data):
        images, targets = data[:2]  # train_on_batch adds a sample-weight slot
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            total, parts = self._compute_losses(images, targets, training=True)
            # Replica gradients are summed, so each replica takes its share of the loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            objective = (total + self._decay_term()) / float(replicas)
            objective = self.optimizer.scale_loss(objective)
        gradients = tape.gradient(objective, variables)
        finite = tf.math.is_finite(total)
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # The loss-scale optimiser already drops non-finite steps; others need this.
            finite = tf.logical_and(finite, tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(g)) for g in gradients]))
            gradients = [tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.nonfinite_tracker.update_state(1.0 - tf.cast(finite, tf.float32))
        logs = self._update_trackers(total, parts, tf.shape(images)[0])
        logs["nonfinite_steps"] = self.nonfinite_tracker.result()
        return self._reducible(logs)

    def test_step(self, data):
        images, targets = data[:2]  # train_on_batch adds a sample-weight slot
        total, parts = self._compute_losses(images, targets, training=False)
        return self._reducible(self._update_trackers(total, parts, tf.shape(images)[0]))


def _is_kernel(variable):
    return variable.path.endswith("kernel") or variable.name == "kernel"


def _is_bias(variable):
    return variable.path.endswith("bias") or variable.name == "bias"


def learning_rate_factor(variable, cfg):
    """The Caffe lr_mult of a variable: stage_lr_multiplier in stages 2..T, times
    bias_lr_multiplier for biases (model.learning_rate_multiplier)."""
    return model_module.learning_rate_multiplier(variable.path, cfg.stage_lr_multiplier,
                                                 cfg.bias_lr_multiplier)


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr = initial * rate ** floor(step / decay_steps) * factor (factor: plateau cuts)."""

    def __init__(self, initial, decay_steps, rate):
        self.initial, self.decay_steps, self.rate = float(initial), int(decay_steps), rate
        self.factor = tf.Variable(1.0, trainable=False, dtype=tf.float32,
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def __call__(self, step):
        value = tf.constant(self.initial, tf.float32) * self.factor
        if self.decay_steps > 0:
            periods = tf.floor(tf.cast(step, tf.float32) / float(self.decay_steps))
            value = value * tf.pow(tf.constant(float(self.rate), tf.float32), periods)
        return value

    def get_config(self):
        return {"initial": self.initial, "decay_steps": self.decay_steps, "rate": self.rate}


def make_schedule(cfg):
    """The step-decay schedule of cfg (create it under the strategy's scope)."""
    return StepDecay(cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_rate)


def make_optimizer(cfg, schedule):
    """SGD/Adam/AdamW whose update step multiplies the learning rate per variable."""
    bases = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam,
             "adamw": keras.optimizers.AdamW}
    name = cfg.optimizer.lower()
    if name not in bases:
        raise ValueError(f"optimizer must be one of {sorted(bases)}, got {cfg.optimizer!r}")

    class WithLearningRateMultipliers(bases[name]):
        def build(self, variables):
            super().build(variables)
            self.lr_factors = [learning_rate_factor(variable, cfg) for variable in variables]

        def update_step(self, gradient, variable, learning_rate):
            factor = self.lr_factors[self._get_variable_index(variable)]
            if factor != 1.0:
                learning_rate = learning_rate * factor
            return super().update_step(gradient, variable, learning_rate)

    if name == "sgd":
        optimizer = WithLearningRateMultipliers(learning_rate=schedule, momentum=cfg.momentum)
    elif name == "adam":
        optimizer = WithLearningRateMultipliers(learning_rate=schedule)
    else:
        optimizer = WithLearningRateMultipliers(learning_rate=schedule,
                                                weight_decay=cfg.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def make_trainer(cfg, network):
    """Compile the training wrapper of `network` (call under the strategy's scope)."""
    schedule = make_schedule(cfg)
    optimizer = make_optimizer(cfg, schedule)
    l2_decay = 0.0 if cfg.optimizer.lower() == "adamw" else cfg.weight_decay
    trainer = PoseTrainer(network, l2_decay=l2_decay)
    trainer.compile(optimizer=optimizer, jit_compile=bool(cfg.jit_compile))
    return trainer, schedule


# ---------------------------------------------------------------------------------------------
# Distribution
# ---------------------------------------------------------------------------------------------
def make_strategy(name):
    """The tf.distribute strategy of --strategy: auto, MirroredStrategy over all GPUs when there
    are several, else the default strategy; mirrored, all GPUs, or every logical CPU device
    when there is no GPU; multiworker, MultiWorkerMirroredStrategy from TF_CONFIG."""
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable "
                             "(cluster spec and this worker's task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    raise ValueError(f"strategy must be auto, mirrored or multiworker, got {name!r}")


def _multi_worker(strategy):

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        strategy.extended._in_multi_worker_mode()


def worker_role(strategy):
    """(is_chief, task_id) of this process; single-machine strategies are always the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not _multi_worker(strategy) or resolver is None or not resolver.task_type:
        return True, 0
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return chief, task_id


def any_worker(strategy, flag):
    """True on every worker when `flag` is true on any of them (a collective on multiworker).

    Decisions that end training must agree, or the workers still training would wait forever
    for the ones that stopped.
    """
    if not _multi_worker(strategy):
        return bool(flag)

    values = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(1.0 if flag else 0.0))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)) > 0.0


def set_precision_policy(cfg):
    """mixed_float16 on GPUs, mixed_bfloat16 on CPUs (float16 is slow there), else float32."""
    if not cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
        return "float32"
    policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def _default_dataset_fn():
    return data_generator.make_dataset


def distributed_dataset(strategy, dataset_fn, cfg, split, training, steps=None):
    """The split's dataset, distributed so each replica gets batch_size / replicas samples.

    steps: when given (evaluation), exactly this many global batches per pass, the same ones
    every time (the stream is repeated then cut), so all workers run equal numbers of steps.
    """
    def build(input_context=None):
        if input_context is None:
            dataset = dataset_fn(cfg, split, training)
        else:
            dataset = dataset_fn(cfg, split, training, input_context=input_context)
        if steps:
            replicas_per_pipeline = 1 if input_context is None else \
                input_context.num_replicas_in_sync // input_context.num_input_pipelines
            dataset = dataset.repeat().take(steps * replicas_per_pipeline)
        return dataset

    if strategy.num_replicas_in_sync == 1 and not _multi_worker(strategy):
        return build()
    return strategy.distribute_datasets_from_function(build)


def fixed_samples(dataset_fn, cfg, split, count=IMAGE_SAMPLES):
    """(images, targets) numpy arrays of the first `count` samples of a deterministic pass."""
    images, targets = next(iter(dataset_fn(cfg, split, False)))
    return (images.numpy()[:count], {key: value.numpy()[:count] for key, value in targets.items()})


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


# ---------------------------------------------------------------------------------------------
# Run state and checkpoints
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunState:
    """What last.json holds; `step` counts optimiser steps (batches) over the whole run."""

    step: int = 0
    epoch: int = 0
    best_loss: float = math.inf
    best_monitor: str = "val_loss"
    epochs_without_improvement: int = 0
    plateau_wait: int = 0
    lr_factor: float = 1.0
    state_file: str = ""
    stop_reason: str = ""


def read_run_state(model_dir):
    """The RunState of models/<run>/last.json, or None when the run has no checkpoint."""
    path = os.path.join(model_dir, SIDECAR_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, "r", encoding="utf-8") as handle:
        values = json.load(handle)
    known = {field.name for field in dataclasses.fields(RunState)}
    state = RunState(**{key: value for key, value in values.items() if key in known})
    state.best_loss = math.inf if state.best_loss is None else float(state.best_loss)
    if not os.path.isfile(os.path.join(model_dir, state.state_file)):
        raise FileNotFoundError(f"{path}: names {state.state_file}, which is missing")
    return state


@contextlib.contextmanager
def _quiet_saving():
    """Hide the DeprecationWarning that Keras' saving raises under NumPy 2 (one per variable)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message="__array__ implementation doesn't accept a copy keyword")
        yield


class TrainError(Exception):
    """An expected failure (an existing run, a refused resume, a checkpoint that cannot be
    written...); the CLI prints its one-line message and exits with status 2."""


def save_network(network, path, cfg):
    """Write the network to `path` (.keras) atomically, with `cfg` stored inside the archive."""
    with _quiet_saving(), utils.atomic_path(path) as temporary:
        network.save(temporary)
        model_module.embed_config(temporary, cfg)


def _bytes_needed(trainer, model_dir):
    """A generous estimate of one checkpoint's size: the last one's, else the variables' x3."""
    sizes = [os.path.getsize(os.path.join(model_dir, name)) for name in os.listdir(model_dir)
             if name.startswith("state-") or name == "last.keras"]
    if sizes:
        return sum(sizes)
    return 3 * sum(int(np.prod(v.shape)) * 4 for v in trainer.network.weights)


def check_free_space(trainer, model_dir):
    """Raise TrainError before writing when model_dir has too little room for a checkpoint.

    A full disk in the middle of an HDF5 write floods the terminal with h5py errors and can
    crash the process; refusing first keeps the last good checkpoint and says why in one line.
    """
    needed, free = 1.2 * _bytes_needed(trainer, model_dir), shutil.disk_usage(model_dir).free
    if free < needed:
        raise TrainError(f"{model_dir}: only {free / 1e6:.1f} MB free, a checkpoint needs about "
                         f"{needed / 1e6:.1f} MB; training stopped, the last good checkpoint "
                         f"({SIDECAR_NAME}) is kept. Free some space and continue with --resume")


def save_checkpoint(trainer, state, model_dir, cfg):
    """Write state-<step>.weights.h5, last.keras, then last.json (the commit), atomically.

    Raises TrainError (one line) when the disk is full or the write fails; the previous
    checkpoint, which last.json still names, is kept and the half-written one removed.
    """
    check_free_space(trainer, model_dir)
    state_file = STATE_PATTERN.format(step=state.step)
    try:
        with _quiet_saving(), utils.atomic_path(os.path.join(model_dir, state_file)) as path:
            trainer.save_weights(path)
        save_network(trainer.network, os.path.join(model_dir, "last.keras"), cfg)
        values = dataclasses.asdict(dataclasses.replace(state, state_file=state_file))
        values["best_loss"] = values["best_loss"] if math.isfinite(values["best_loss"]) else None
        utils.atomic_write_json(os.path.join(model_dir, SIDECAR_NAME), values, indent=2)
    except OSError as error:
        if state.state_file != state_file and os.path.exists(os.path.join(model_dir, state_file)):
            os.remove(os.path.join(model_dir, state_file))
        raise TrainError(f"{model_dir}: could not write the checkpoint of step {state.step} "
                         f"({error.strerror or error}); training stopped, the last good "
                         f"checkpoint is kept. Continue with --resume") from error
    state.state_file = state_file
    for name in os.listdir(model_dir):
        if name.startswith("state-") and name.endswith(".weights.h5") and name != state_file:
            os.remove(os.path.join(model_dir, name))


def restore_checkpoint(trainer, state, model_dir):
    """Load network and optimiser state (call under the strategy's scope); every variable must
    come from the file (model.check_fully_loaded), or CheckpointError says so."""
    trainer.build_optimizer()
    path = os.path.join(model_dir, state.state_file)
    with warnings.catch_warnings():
        # A mismatch is reported below as one error rather than as Keras' warnings.
        warnings.simplefilter("ignore", UserWarning)
        try:
            trainer.load_weights(path)
        except (ValueError, KeyError) as error:
            raise model_module.CheckpointError(
                f"{path}: does not fit the network and optimiser of the run's config "
                f"({str(error).splitlines()[0]})") from error
    model_module.check_fully_loaded(trainer.network.weights + trainer.optimizer.variables, path)


def _all_finite(network):
    return all(np.isfinite(weight).all() for weight in network.get_weights())


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

class TimeBudget(keras.callbacks.Callback):
    """Stops every worker together once max_train_minutes have passed (0: no limit)."""

    def __init__(self, state, minutes, strategy):
        super().__init__()
        self.state, self.minutes, self.strategy = state, minutes, strategy
        self.started = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if self.minutes <= 0:
            return
        over = time.monotonic() - self.started > self.minutes * 60.0
        if any_worker(self.strategy, over):
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
        TimeBudget(state, cfg.max_train_minutes, run.strategy),
        Checkpointer(cfg, state, run.write_model_dir, run.schedule, run.steps_per_epoch,
                     monitor),
        LearningRateLogger(),
        keras.callbacks.CSVLogger(os.path.join(run.write_log_dir, "training.csv"),
                                  append=True),
        keras.callbacks.TensorBoard(log_dir=run.write_log_dir, update_freq="epoch",
                                    write_graph=False),
    ]
    if samples is not None and cfg.log_images_every > 0:
        callbacks.append(MapImages(state, samples, run.write_log_dir, cfg.log_images_every))
    return callbacks


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
# Config roles whose fields must not change on --resume: they shape the saved weights and
# optimiser state (config.py says each field's role).
RESUME_FIXED_ROLES = (config_module.ARCHITECTURE, config_module.TRAINING_STATE)


def check_resumable(cfg, model_dir):
    """Raise TrainError naming every field of RESUME_FIXED_ROLES that differs from the run's
    saved config.json."""
    saved_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(saved_path):
        return
    saved = config_module.load_config(saved_path)
    changed = config_module.changed_fields(saved, cfg, RESUME_FIXED_ROLES)
    if changed:
        details = ", ".join(f"--{name} {before!r} -> {after!r}" for name, before, after in changed)
        raise TrainError(f"{saved_path}: cannot resume with a different {details} (the saved "
                         f"weights and optimiser state fit the saved value); drop the option "
                         f"or start a new run with --run_name")


def initial_state(cfg, model_dir):
    """(RunState to start from, resumed): last.json when resuming, a fresh state otherwise."""
    saved = read_run_state(model_dir)
    if cfg.resume:
        if saved is None:
            LOGGER.warning("--resume given but %s/ has no checkpoint yet; starting a new run",
                           model_dir)
            return RunState(), False
        check_resumable(cfg, model_dir)
        saved.stop_reason = ""
        return saved, True
    if saved is not None:
        raise TrainError(f"{model_dir}/ already holds run {cfg.name!r} (step {saved.step}); "
                         f"pass --resume to continue it or choose another --run_name")
    return RunState(), False


@dataclasses.dataclass
class Run:
    """One training run's pieces, made by Run.open and used by fit.

    model_dir is the run's checkpoint folder (read when resuming); write_model_dir and
    write_log_dir are where this process writes: the run's own folders on the chief, scratch
    folders (deleted by close) on other workers.
    """

    cfg: config_module.Config
    strategy: tf.distribute.Strategy
    policy: str
    chief: bool
    model_dir: str
    write_model_dir: str
    write_log_dir: str
    scratch: list
    state: RunState
    resumed: bool
    network: keras.Model = None
    trainer: PoseTrainer = None
    schedule: StepDecay = None
    steps_per_epoch: int = 0
    validation_steps: int = None
    has_validation: bool = False

    @classmethod
    def open(cls, cfg):
        """Precision policy, strategy, this worker's role and folders, and the run state."""
        policy = set_precision_policy(cfg)
        strategy = make_strategy(cfg.strategy)
        chief, task_id = worker_role(strategy)
        model_dir, log_dir = config_module.run_directories(cfg)
        scratch = []
        if not chief:
            scratch = [tempfile.mkdtemp(prefix=f"openpose-worker{task_id}-")]
            model_dir_out, log_dir_out = (os.path.join(scratch[0], n) for n in ("models", "logs"))
        else:
            model_dir_out, log_dir_out = model_dir, log_dir
        for directory in (model_dir_out, log_dir_out):
            os.makedirs(directory, exist_ok=True)
        state, resumed = initial_state(cfg, model_dir)
        return cls(cfg, strategy, policy, chief, model_dir, model_dir_out, log_dir_out, scratch,
                   state, resumed)

    def build(self):
        """The network, its trainer and schedule, restored from the checkpoint when resuming
        or with the backbone weights otherwise; then the config is saved beside both."""
        keras.utils.set_random_seed(self.cfg.seed + self.state.step)
        with self.strategy.scope():
            self.network = model_module.build_model(self.cfg)
            self.trainer, self.schedule = make_trainer(self.cfg, self.network)
            if self.resumed:
                restore_checkpoint(self.trainer, self.state, self.model_dir)
                self.schedule.factor.assign(self.state.lr_factor)
            elif model_module.load_backbone_weights(self.network, self.cfg.backbone_weights):
                LOGGER.info("backbone conv1_1..conv4_2 from %s", self.cfg.backbone_weights)
        csv_path = os.path.join(self.write_log_dir, "training.csv")
        if self.chief and not self.resumed and os.path.exists(csv_path):
            os.remove(csv_path)  # left by a run that never saved a checkpoint
        for directory in (self.write_model_dir, self.write_log_dir):
            config_module.save_config(self.cfg, os.path.join(directory, "config.json"))

    def close(self):
        for directory in self.scratch:
            shutil.rmtree(directory, ignore_errors=True)


def resolve_steps(run, real_data):
    """Set run.steps_per_epoch, run.validation_steps (None: one pass) and run.has_validation."""
    cfg = run.cfg
    run.steps_per_epoch = cfg.steps_per_epoch
    if run.steps_per_epoch <= 0:
        if not real_data:
            raise TrainError("steps_per_epoch must be set when training on a custom dataset")
        records = data_generator.count_records(cfg, "train")
        if records == 0:
            raise TrainError(f"{cfg.records_dir}/train.jsonl: no training records; run "
                             f"pre-process.py first")
        run.steps_per_epoch = max(1, records // cfg.batch_size)
    run.has_validation = (not real_data) or data_generator.count_records(cfg, "val") > 0
    run.validation_steps = cfg.validation_steps or None
    if run.has_validation and run.validation_steps is None and \
            run.strategy.num_replicas_in_sync > 1:
        # One pass would end with replicas (or workers) holding no data for the last step,
        # which tf.distribute fails on; a fixed count of a repeated stream cannot.
        run.validation_steps = math.ceil(data_generator.count_records(cfg, "val") /
                                         cfg.batch_size) if real_data else 2


def fit_phases(state, steps_per_epoch, epochs):
    """[(initial_epoch, end_epoch, steps_per_epoch)] that finish the run from state.step: the
    rest of an interrupted epoch, then whole epochs."""
    epoch, done = divmod(state.step, steps_per_epoch)
    phases = []
    if done and epoch < epochs:
        phases.append((epoch, epoch + 1, steps_per_epoch - done))
        epoch += 1
    if epoch < epochs:
        phases.append((epoch, epochs, steps_per_epoch))
    return phases


def train(cfg, dataset_fn=None):
    """Train as configured; returns a summary dict (see the module docstring for the files).

    dataset_fn(cfg, split, training[, input_context]) -> batched dataset; default
    data_generator.make_dataset on the records. Raises TrainError for expected failures.
    """
    problem = data_generator.pipeline_problem(cfg) if dataset_fn is None else ""
    if problem:
        raise TrainError(problem)
    # Before anything starts TensorFlow: its intra-op pool is sized once, at start.
    threads = data_generator.configure_host_threads(cfg)
    LOGGER.info("TensorFlow intra-op threads: %s", threads or "TensorFlow's default")
    run = Run.open(cfg)
    try:
        resolve_steps(run, real_data=dataset_fn is None)
        run.build()
        summary = fit(run, dataset_fn or data_generator.make_dataset)
    finally:
        run.close()
    summary.update(run=cfg.name, policy=run.policy, replicas=run.strategy.num_replicas_in_sync,
                   resumed=run.resumed, chief=run.chief, model_dir=run.model_dir)
    return summary


def fit(run, dataset_fn):
    """Keras fit over the phases of fit_phases; returns the summary of the steps run."""
    cfg, state, strategy = run.cfg, run.state, run.strategy
    # A resumed run reshuffles with another seed rather than replaying the first batches.
    stream_cfg = dataclasses.replace(cfg, seed=cfg.seed + state.step)
    train_data = distributed_dataset(strategy, dataset_fn, stream_cfg, "train", True)
    validation_data = distributed_dataset(strategy, dataset_fn, cfg, "val", False,
                                          run.validation_steps) if run.has_validation else None
    monitor = "val_loss" if run.has_validation else "loss"
    if not run.has_validation:
        LOGGER.warning("no validation records; best.keras follows the training loss")
    samples = fixed_samples(dataset_fn, cfg, "val" if run.has_validation else "train") \
        if run.chief else None
    state.best_monitor = monitor
    callbacks = make_callbacks(run, monitor, samples)
    start_step, started = state.step, time.monotonic()
    LOGGER.info("run %r from epoch %d step %d (%d steps per epoch, %d epochs, %d replica(s), "
                "global batch %d)", cfg.name, state.step // run.steps_per_epoch, state.step,
                run.steps_per_epoch, cfg.epochs, strategy.num_replicas_in_sync, cfg.batch_size)
    verbose = (1 if sys.stdout.isatty() else 2) if run.chief else 0
    # Keras warns when a one-pass validation set of unknown length first runs out; that is
    # how evaluation ends here (the training stream is infinite and cannot run out).
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    for initial_epoch, end_epoch, steps in fit_phases(state, run.steps_per_epoch, cfg.epochs):
        run.trainer.fit(train_data, initial_epoch=initial_epoch, epochs=end_epoch,
                        steps_per_epoch=steps, validation_data=validation_data,
                        callbacks=callbacks, verbose=verbose, shuffle=False)
        if state.stop_reason:
            break
    csv_path = os.path.join(run.write_log_dir, "training.csv")
    if run.chief and os.path.isfile(csv_path):
        write_loss_curve(csv_path, os.path.join(run.write_log_dir, "loss_curve.png"))
    # A last collective keeps the workers together until the chief is done, so no worker
    # exits while another still expects its heartbeats.
    any_worker(strategy, False)
    return dict(step=state.step, epoch=state.step // run.steps_per_epoch,
                steps_this_run=state.step - start_step,
                optimizer_iterations=int(run.trainer.optimizer.iterations.numpy()),
                best_loss=state.best_loss, monitor=monitor,
                stop_reason=state.stop_reason or "finished",
                minutes=round((time.monotonic() - started) / 60.0, 3))


def main(cfg, dataset_fn=None):
    """Train with `cfg` (a config.Config); returns the summary dict that the CLI prints."""
    return train(cfg, dataset_fn)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_module.add_config_arguments(parser)
    return config_module.config_from_args(parser.parse_args(argv))


# Failures a user can cause and fix: one line on stderr, exit status 2, no traceback.
EXPECTED_ERRORS = (TrainError, model_module.CheckpointError, OSError)


if __name__ == "__main__":
    utils.configure_script_logging("train.py")
    try:
        summary = main(parse_arguments())
    except EXPECTED_ERRORS as error:
        print(f"train.py: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(json.dumps(summary))
    sys.exit(1 if summary["stop_reason"] == "nan" else 0)
