"""Test set-up: the repo root on sys.path, quiet TensorFlow, and no accidental downloads."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def load_pre_process():
    """pre-process.py has a hyphen in its name, so the tests import it from its path."""
    if "pre_process" in sys.modules:
        return sys.modules["pre_process"]
    spec = importlib.util.spec_from_file_location("pre_process",
                                                  os.path.join(ROOT, "pre-process.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["pre_process"] = module  # dataclasses look their module up here.
    spec.loader.exec_module(module)
    return module


class SimulatedKill(BaseException):
    """Stands for SIGKILL: no `except Exception` of the code under test catches it."""


def kill_after_renames(patch, count):
    """Make the `count`-th os.rename or os.replace from now on the last thing the process does."""
    calls = []

    def counting(real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            calls.append(args)
            if len(calls) == count:
                raise SimulatedKill
            return result
        return call

    patch.setattr(os, "rename", counting(os.rename))
    patch.setattr(os, "replace", counting(os.replace))
