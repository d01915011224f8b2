"""Train the OpenPose network with Keras `fit` on the tf.data pipeline.

    python train.py --preset cpu                       # a small model on this CPU
    python train.py --preset paper --backbone_weights imagenet
    python train.py --preset cpu --resume              # continue models/cpu/ where it stopped

The pieces of a run (strategy, this worker's role and folders, run state, network, trainer,
schedule, step counts) are one ``Run``; ``train(cfg)`` opens it, builds it and fits it.
Messages go through ``logging`` (the CLI prints them as ``train.py: ...``); expected failures
raise ``TrainError`` or ``model.CheckpointError``, which the CLI prints as one line before
exiting with status 2.

The pieces live in: trainer.py (the training model with its loss, optimiser with the
original's learning-rate multipliers, schedule, NaN guard and tf.distribute strategy),
callbacks.py (NaN guard, time budget, checkpointing, TensorBoard images, loss curve) and
checkpoints.py (run state, atomic checkpoints, free-space check); this file opens the run,
checks a resume, builds the datasets and fits.

Safety
    A step whose loss or gradients are not finite is not applied (its gradients are zeroed),
    training stops with a message, and no checkpoint is written after it, so models/<run>/ keeps
    the last finite weights (with mixed float16 the loss-scale optimiser skips such steps
    itself and only a non-finite loss stops the run). max_train_minutes stops cleanly and saves.
    Before each checkpoint the free space is checked; a full disk (or a failed write) stops the
    run with one line and keeps the last good checkpoint.

Input pipeline
    dataset.make_dataset makes the batches; with --pipeline tf (the default) every sample
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

Distribution (--strategy auto|mirrored|multiworker; see trainer.make_strategy)
    The global batch (batch_size) is split across replicas by distribute_datasets_from_function:
    each worker's input pipeline reads its own shard of the records and batches
    batch_size / replicas per replica. Only the chief writes checkpoints and logs; other workers
    write theirs to temporary folders that are deleted (they must still save, since saving reads
    synchronised variables collectively).
"""

from __future__ import annotations

import argparse
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

import keras
import tensorflow as tf

import config as config_module
import dataset
import model as model_module
import utils
from callbacks import make_callbacks, write_loss_curve
from checkpoints import RunState, TrainError, read_run_state, restore_checkpoint
from trainer import (PoseTrainer, StepDecay, any_worker, is_multi_worker, make_strategy,
                     make_trainer, set_precision_policy, worker_role)

LOGGER = logging.getLogger("train")
# Validation samples drawn in TensorBoard.
IMAGE_SAMPLES = 3


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def _default_dataset_fn():
    return dataset.make_dataset


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

    if strategy.num_replicas_in_sync == 1 and not is_multi_worker(strategy):
        return build()
    return strategy.distribute_datasets_from_function(build)


def fixed_samples(dataset_fn, cfg, split, count=IMAGE_SAMPLES):
    """(images, targets) numpy arrays of the first `count` samples of a deterministic pass."""
    images, targets = next(iter(dataset_fn(cfg, split, False)))
    return (images.numpy()[:count], {key: value.numpy()[:count] for key, value in targets.items()})


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
        records = dataset.count_records(cfg, "train")
        if records == 0:
            raise TrainError(f"{cfg.records_dir}/train.jsonl: no training records; run "
                             f"pre-process.py first")
        run.steps_per_epoch = max(1, records // cfg.batch_size)
    run.has_validation = (not real_data) or dataset.count_records(cfg, "val") > 0
    run.validation_steps = cfg.validation_steps or None
    if run.has_validation and run.validation_steps is None and \
            run.strategy.num_replicas_in_sync > 1:
        # One pass would end with replicas (or workers) holding no data for the last step,
        # which tf.distribute fails on; a fixed count of a repeated stream cannot.
        run.validation_steps = math.ceil(dataset.count_records(cfg, "val") /
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
    dataset.make_dataset on the records. Raises TrainError for expected failures.
    """
    problem = dataset.pipeline_problem(cfg) if dataset_fn is None else ""
    if not problem and dataset_fn is None and cfg.data_service_address:
        problem = dataset.service_problem(cfg.data_service_address)
    if problem:
        raise TrainError(problem)
    # Before anything starts TensorFlow: its intra-op pool is sized once, at start.
    threads = dataset.configure_host_threads(cfg)
    LOGGER.info("TensorFlow intra-op threads: %s", threads or "TensorFlow's default")
    run = Run.open(cfg)
    try:
        resolve_steps(run, real_data=dataset_fn is None)
        run.build()
        summary = fit(run, dataset_fn or dataset.make_dataset)
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
