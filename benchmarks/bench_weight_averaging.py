"""Weight averaging (--ema_momentum) on one run: the official mAP of the weights and of their
average, side by side.

    python quickstart.py --workdir /tmp/qs -- --ema_momentum 0.99
    python benchmarks/bench_weight_averaging.py --model_dir /tmp/qs/models/quickstart \\
        --images /tmp/qs/data/ai_challenger_keypoint_validation_20170911/keypoint_validation_images_20170911 \\
        --ref /tmp/qs/data/ai_challenger_keypoint_validation_20170911/keypoint_validation_annotations_20170911.json

A run with ema_momentum above 0 keeps both in its last state file (state-<step>.weights.h5): the
weights that training goes on from, and the optimiser's moving average of them. The average
does not feed back into training, so the two are a paired comparison within one run, free of
the drift between two runs on a shared machine. This writes each to a network file (raw.keras
and averaged.keras in --out_dir) and scores both with evaluate.py on the given images, each in
its own process. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import config  # noqa: E402
import checkpoints  # noqa: E402


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True,
                        help="a run's folder (models/<run>) trained with --ema_momentum > 0")
    parser.add_argument("--images", required=True, help="validation image folder")
    parser.add_argument("--ref", required=True, help="its official annotation JSON")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--out_dir", default="",
                        help="where the two networks and their scores go "
                             "(default: MODEL_DIR/weight_averaging)")
    return parser.parse_args(argv)


def write_networks(model_dir, out_dir):
    """Write raw.keras (the state file's weights) and averaged.keras (their average); returns
    (step, ema_momentum, {name: path})."""
    import model
    import trainer as trainer_module

    cfg = config.load_config(os.path.join(model_dir, "config.json"))
    if cfg.ema_momentum <= 0.0:
        raise SystemExit(f"bench_weight_averaging: {model_dir} was trained without weight "
                         f"averaging (ema_momentum {cfg.ema_momentum}); train with "
                         f"--ema_momentum 0.99")
    state = checkpoints.read_run_state(model_dir)
    if state is None:
        raise SystemExit(f"bench_weight_averaging: {model_dir} holds no checkpoint (last.json)")
    trainer, _ = trainer_module.make_trainer(cfg, model.build_model(cfg))
    checkpoints.restore_checkpoint(trainer, state, model_dir)
    paths = {name: os.path.join(out_dir, f"{name}.keras") for name in ("raw", "averaged")}
    config.save_config(cfg, os.path.join(out_dir, "config.json"))  # load_checkpoint reads it
    checkpoints.save_network(trainer.network, paths["raw"], cfg)
    with trainer_module.averaged_weights(trainer):
        checkpoints.save_network(trainer.network, paths["averaged"], cfg)
    return state.step, cfg.ema_momentum, paths


def score(network_path, args, out_dir, name):
    """The official mAP, AP@0.5 and AP@0.75 of one network file, from evaluate.py's JSON."""
    scores_path = os.path.join(out_dir, f"{name}_scores.json")
    command = [sys.executable, os.path.join(ROOT, "evaluate.py"), "--model", network_path,
               "--images", args.images, "--ref", args.ref, "--no_progress",
               "--out", os.path.join(out_dir, f"{name}_predictions.json"),
               "--json_out", scores_path]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(scores_path, "r", encoding="utf-8") as handle:
        scores = json.load(handle)
    return dict(mAP=scores["score"], ap50=scores["ap50"], ap75=scores["ap75"])


def main(args):
    out_dir = args.out_dir or os.path.join(args.model_dir, "weight_averaging")
    os.makedirs(out_dir, exist_ok=True)
    step, momentum, paths = write_networks(args.model_dir, out_dir)
    rows = {name: score(path, args, out_dir, name) for name, path in paths.items()}
    for name, row in rows.items():
        print(f"{name:>9}: mAP {row['mAP']:.4f}  AP@0.5 {row['ap50']:.4f}  "
              f"AP@0.75 {row['ap75']:.4f}")
    summary = dict(model_dir=args.model_dir, step=step, ema_momentum=momentum, **rows,
                   mAP_gain=rows["averaged"]["mAP"] - rows["raw"]["mAP"])
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(parse_arguments())
