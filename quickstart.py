"""The whole chain on a CPU, unattended: synthetic data -> records -> training -> mAP -> drawings.

    python quickstart.py                      # 2,000 synthetic images, 20 minutes of training
    python quickstart.py --images 40 --minutes 1 --workdir /tmp/qs -- --steps_per_epoch 5

Every step is the ordinary script a user would run, started as its own process with the
chosen --preset, so it exercises exactly what the README's quick start documents. Arguments after
`--` are extra config overrides passed to train.py (for example a smaller input for a smoke
test). The last line printed is a JSON summary of the figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import config
import utils

# The synthetic set has the official validation release's layout.
VALIDATION = config.AIC_RELEASES["val"]
# The preset the quick start trains: of cpu and light, the one with the higher mAP after the
# quick start's 20 minutes on 2 cores: cpu 0.4885 and 0.4366, light 0.0000 (its depthwise
# convolutions train at 9.6 images/s here against cpu's 16.9; docs/benchmarks.md).
DEFAULT_PRESET = "cpu"


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000,
                        help="synthetic images to generate, train and validation together")
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="training time budget in minutes")
    parser.add_argument("--workdir", default=".",
                        help="where data/, models/, logs/ and the demo drawings go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data set")
    parser.add_argument("--run_name", default="quickstart", help="name of the training run")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(config.PRESETS),
                        help=f"network and recipe to train (default: {DEFAULT_PRESET}, the one "
                             "that scored higher in 20 minutes here; see docs/benchmarks.md)")
    parser.add_argument("--demo_images", type=int, default=4,
                        help="validation images to draw the found people on")
    parser.add_argument("train_overrides", nargs=argparse.REMAINDER,
                        help="-- followed by config overrides for train.py")
    arguments = parser.parse_args(argv)
    if arguments.train_overrides[:1] == ["--"]:
        arguments.train_overrides = arguments.train_overrides[1:]
    return arguments


def run_step(title, command):
    """Run one script as a subprocess, streaming its output; stop the chain if it fails."""
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    started = time.time()
    result = subprocess.run(command)
    seconds = time.time() - started
    if result.returncode != 0:
        sys.exit(f"quickstart: step '{title}' failed with exit status {result.returncode}")
    print(f"=== {title}: done in {seconds:.0f} s", flush=True)
    return seconds


def copy_demo_images(validation_images, destination, count):
    """Copy the first `count` validation images (sorted) to `destination` for the demo."""
    os.makedirs(destination, exist_ok=True)
    chosen = sorted(glob.glob(os.path.join(validation_images, "*.jpg")))[:count]
    for path in chosen:
        shutil.copy(path, os.path.join(destination, os.path.basename(path)))
    return chosen


def chain_paths(arguments):
    """Every folder and file of the chain, under arguments.workdir."""
    data = os.path.join(arguments.workdir, "data")
    validation_dir = os.path.join(data, VALIDATION.folder)
    model_dir = os.path.join(arguments.workdir, "models", arguments.run_name)
    log_dir = os.path.join(arguments.workdir, "logs", arguments.run_name)
    return dict(
        data=data, records=os.path.join(data, "records"),
        models=os.path.join(arguments.workdir, "models"),
        logs=os.path.join(arguments.workdir, "logs"),
        validation_images=os.path.join(validation_dir, VALIDATION.images),
        reference=os.path.join(validation_dir, VALIDATION.annotations),
        model_dir=model_dir, log_dir=log_dir, checkpoint=os.path.join(model_dir, "best.keras"),
        predictions=os.path.join(log_dir, "val_predictions.json"),
        scores=os.path.join(log_dir, "val_scores.json"),
        demo_dir=os.path.join(arguments.workdir, "images", "quickstart"))


def chain_commands(arguments, paths):
    """[(title, command)] of the five steps, each an ordinary script run."""
    python = sys.executable
    data_arguments = ["--data_dir", paths["data"], "--records_dir", paths["records"]]
    run_arguments = ["--preset", arguments.preset, "--models_dir", paths["models"],
                     "--logs_dir", paths["logs"], "--run_name", arguments.run_name]
    return [
        ("synthetic", "1/5 synthetic AI Challenger data set",
         [python, "pre-process.py", "--synthetic", str(arguments.images),
          "--seed", str(arguments.seed), *data_arguments]),
        ("pre_process", "2/5 pre-processing to records",
         [python, "pre-process.py", *data_arguments]),
        ("train", f"3/5 training ({arguments.preset} preset)",
         [python, "train.py", *run_arguments, *data_arguments,
          "--max_train_minutes", str(arguments.minutes), *arguments.train_overrides]),
        ("evaluate", "4/5 official mAP on the synthetic validation split",
         [python, "evaluate.py", "--model", paths["checkpoint"], "--images",
          paths["validation_images"], "--ref", paths["reference"], "--out",
          paths["predictions"], "--json_out", paths["scores"]]),
        ("demo", "5/5 demo drawings",
         [python, "demo.py", "--model", paths["checkpoint"], "--image", paths["demo_dir"]]),
    ]


def main(arguments):
    paths = chain_paths(arguments)
    if os.path.exists(paths["model_dir"]):
        # train.py refuses to overwrite a run; say so now rather than after making the data.
        sys.exit(f"quickstart: {paths['model_dir']}/ already holds an earlier quick start; "
                 f"remove it and {paths['log_dir']}/, or pass --run_name NAME for a new run")
    timings = {}
    started = time.time()
    for key, title, command in chain_commands(arguments, paths):
        if key == "demo":
            copy_demo_images(paths["validation_images"], paths["demo_dir"],
                             arguments.demo_images)
        timings[key] = run_step(title, command)
    summary = summarise(paths["scores"], paths["model_dir"], paths["log_dir"],
                        paths["demo_dir"], timings, time.time() - started)
    summary["preset"] = arguments.preset
    utils.atomic_write_json(os.path.join(paths["log_dir"], "quickstart_summary.json"), summary,
                            indent=2)
    print_summary(summary)
    return summary


def summarise(scores_path, model_dir, log_dir, demo_dir, timings, total_seconds):
    with open(scores_path, "r", encoding="utf-8") as handle:
        scores = json.load(handle)
    with open(os.path.join(model_dir, "last.json"), "r", encoding="utf-8") as handle:
        steps = json.load(handle)["step"]
    batch_size = config.load_config(os.path.join(model_dir, "config.json")).batch_size
    drawings = sorted(glob.glob(os.path.join(demo_dir, "*_pose.jpg")))
    return dict(
        mAP=scores["score"], ap50=scores["ap50"], ap75=scores["ap75"],
        # Whole-run throughput: start-up, validation and checkpoints included.
        train_steps=steps,
        train_images_per_second=round(steps * batch_size / timings["train"], 2),
        loss_curve=os.path.join(log_dir, "loss_curve.png"),
        tensorboard_logs=log_dir, demo_drawings=drawings,
        step_seconds={key: round(value, 1) for key, value in timings.items()},
        total_minutes=round(total_seconds / 60.0, 2),
    )


def print_summary(summary):
    print("\n=== quick start finished")
    print(f"  synthetic validation mAP (official metric): {summary['mAP']:.4f}")
    print(f"  AP@0.5: {summary['ap50']:.4f}   AP@0.75: {summary['ap75']:.4f}")
    print(f"  training: {summary['train_steps']} steps, "
          f"{summary['train_images_per_second']:.1f} images/s")
    print(f"  loss curve: {summary['loss_curve']}")
    print(f"  TensorBoard: tensorboard --logdir {summary['tensorboard_logs']}")
    print(f"  demo drawings: {', '.join(summary['demo_drawings']) or 'none'}")
    print(f"  total time: {summary['total_minutes']:.1f} minutes")
    print(json.dumps(summary))


if __name__ == "__main__":
    main(parse_arguments())
