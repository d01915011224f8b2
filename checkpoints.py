"""Run state and checkpoints of train.py: last.json, state files, the saved networks.

    models/<run>/last.keras      the network after the last checkpoint (Functional, no optimiser,
                                 the run's config stored inside: model.embed_config)
    models/<run>/best.keras      the network with the lowest validation loss so far
                                 (last.keras and best.keras hold the averaged weights when
                                 ema_momentum is on; the state file holds both)
    models/<run>/state-<step>.weights.h5  network + optimiser state for --resume
    models/<run>/last.json       epoch, step, best loss, plateau state and the state file; it is
                                 written last, atomically, so it always names a complete state

Every file is written to a temporary name and renamed into place. Before each checkpoint the
free space is checked; a full disk (or a failed write) raises TrainError and keeps the last good
checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import warnings

import numpy as np

import model as model_module
import utils
from trainer import averaged_weights

LOGGER = logging.getLogger("train")
SIDECAR_NAME = "last.json"
STATE_PATTERN = "state-{step:09d}.weights.h5"


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
    try:
        with open(path, "r", encoding="utf-8") as handle:
            values = json.load(handle)
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        # It is written atomically, so this is damage from outside the run (an editor, a copy).
        raise TrainError(f"{path}: unreadable run state ({error}); restore it or start a new "
                         f"run with another --run_name") from error
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
        with averaged_weights(trainer):
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
        except OSError as error:
            raise model_module.CheckpointError(
                f"{path}: unreadable or truncated state file ({str(error).splitlines()[0]})"
            ) from error
        except (ValueError, KeyError) as error:
            raise model_module.CheckpointError(
                f"{path}: does not fit the network and optimiser of the run's config "
                f"({str(error).splitlines()[0]})") from error
    model_module.check_fully_loaded(trainer.network.weights + trainer.optimizer.variables, path)


def _all_finite(network):
    return all(np.isfinite(weight).all() for weight in network.get_weights())
