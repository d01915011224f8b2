"""Full-size check of the paper recipe: does the `paper` preset train at 368x368?

    python benchmarks/bench_recipe.py                       # 10 steps per normalisation
    python benchmarks/bench_recipe.py --steps 30 --backbone_weights vgg19_notop.h5
    python benchmarks/bench_recipe.py --normalizations openpose --records_dir data/records

For each input normalisation (``--normalizations``, default both) it builds the `paper` network
at 368x368, copies a VGG19 backbone into it, and runs N steps of train.py's own training step
(PoseTrainer: the summed Caffe loss over six stages and two branches, SGD with momentum, the
4x/2x learning-rate multipliers, L2 weight decay) on batches from dataset.make_dataset
over synthetic AI Challenger records. It prints the loss of every step, the first update's size
relative to the weights of the stage-1 heatmap output layer, and, last, a JSON summary.

Real ImageNet weights cannot be downloaded here, so without ``--backbone_weights`` it writes a
VGG19 weights file whose activations have the spread of real ImageNet VGG19 on mean-subtracted
0..255 pixels: He-normal kernels and zero biases, which keep the input's spread (about 58 at
conv4_2 on noise images; the summary prints what it measured). A summed loss's gradient grows
with the number of grid cells, so this must run at full size: a small input hides divergence.

Exit status 1 when the paper preset's default normalisation diverges (a non-finite loss, or a
loss above ``--divergence_factor`` times the first one); the other normalisations are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import config  # noqa: E402
import dataset  # noqa: E402

# The layer whose first update is reported: stage 1's heatmap output, as in the CI test.
PROBE_LAYER = "conv5_5_CPM_L2"


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="training steps per normalisation")
    parser.add_argument("--batch_size", type=int, default=2, help="images per step (paper: 10)")
    parser.add_argument("--input_size", type=int, default=368, help="crop size (paper: 368)")
    parser.add_argument("--normalizations", default="openpose,imagenet",
                        help="comma-separated input normalisations to try")
    parser.add_argument("--backbone_weights", default="",
                        help="VGG19 weights file; default: one with ImageNet-scale activations")
    parser.add_argument("--records_dir", default="",
                        help="records to train on (default: a synthetic set made in a temp dir)")
    parser.add_argument("--data_dir", default="", help="image root of --records_dir")
    parser.add_argument("--synthetic_images", type=int, default=40,
                        help="size of the synthetic set made when no --records_dir is given")
    parser.add_argument("--divergence_factor", type=float, default=10.0,
                        help="a loss above this times the first one counts as divergence")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
    return parser.parse_args(argv)


def imagenet_scale_vgg19(path, seed=0):
    """Write VGG19 (include_top=False) weights with He-normal kernels and zero biases to `path`.

    Returns the standard deviation of conv4_2's output on uniform-noise 0..255 images after
    ImageNet-mean subtraction (real ImageNet VGG19 gives tens there).
    """
    import keras
    from keras.applications import VGG19

    vgg = VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(seed)
    for layer in vgg.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:3])
            layer.set_weights([rng.normal(0, math.sqrt(2.0 / fan_in), kernel.shape)
                               .astype(np.float32), np.zeros_like(bias)])
    vgg.save_weights(path)
    probe = keras.Model(vgg.input, vgg.get_layer("block4_conv2").output)
    noise = rng.uniform(0, 255, (1, 96, 96, 3)).astype(np.float32)[..., ::-1]
    return float(np.asarray(probe(noise - np.array([103.939, 116.779, 123.68], np.float32))).std())


def synthetic_records(workdir, images, seed):
    """Make a synthetic AIC set and its records under workdir with the project's own CLI."""
    data_dir, records_dir = os.path.join(workdir, "data"), os.path.join(workdir, "records")
    quiet = dict(check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    subprocess.run([sys.executable, "pre-process.py", "--synthetic", str(images), "--seed",
                    str(seed), "--data_dir", data_dir], **quiet)
    subprocess.run([sys.executable, "pre-process.py", "--data_dir", data_dir, "--records_dir",
                    records_dir], **quiet)
    return data_dir, records_dir


def relative_update(before, after):
    """|after - before| / |before| (Frobenius norms) of one weight array."""
    return float(np.linalg.norm(after - before) / max(np.linalg.norm(before), 1e-12))


def run_recipe(cfg, steps, divergence_factor):
    """Train `cfg` for `steps` steps with train.py's trainer; returns a result dict."""
    import keras

    import model as model_module
    import trainer as trainer_module

    keras.utils.set_random_seed(cfg.seed)
    network = model_module.build_model(cfg)
    model_module.load_backbone_weights(network, cfg.backbone_weights)
    trainer, _ = trainer_module.make_trainer(cfg, network)
    batches = iter(dataset.make_dataset(cfg, "train", training=True))
    probe = network.get_layer(PROBE_LAYER).kernel
    losses, first_update, started = [], math.nan, time.monotonic()
    for step in range(steps):
        images, targets = next(batches)
        before = probe.numpy().copy() if step == 0 else None
        logs = trainer.train_on_batch(images, targets, return_dict=True)
        losses.append(float(logs["loss"]))
        if step == 0:
            first_update = relative_update(before, probe.numpy())
        print(f"  {cfg.input_normalization:9s} step {step + 1:3d}  loss {losses[-1]:12.4f}"
              f"{'  (update dropped: not finite)' if logs['nonfinite_steps'] else ''}",
              flush=True)
        if not math.isfinite(losses[-1]):
            break
    diverged = (not all(math.isfinite(value) for value in losses)
                or max(losses) > divergence_factor * losses[0])
    return dict(normalization=cfg.input_normalization, losses=[round(v, 4) for v in losses],
                first_update_relative=first_update, diverged=diverged,
                seconds_per_step=round((time.monotonic() - started) / max(len(losses), 1), 2))


def main(arguments):
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    modes = [mode.strip() for mode in arguments.normalizations.split(",") if mode.strip()]
    default_mode = config.Config().input_normalization
    with tempfile.TemporaryDirectory(prefix="bench_recipe-") as workdir:
        weights, conv4_2_std = arguments.backbone_weights, None
        if not weights:
            weights = os.path.join(workdir, "vgg19_imagenet_scale.weights.h5")
            conv4_2_std = imagenet_scale_vgg19(weights, arguments.seed)
            print(f"backbone: He-normal VGG19, conv4_2 output std {conv4_2_std:.1f} on "
                  f"mean-subtracted noise images", flush=True)
        data_dir, records_dir = arguments.data_dir, arguments.records_dir
        if not records_dir:
            data_dir, records_dir = synthetic_records(workdir, arguments.synthetic_images,
                                                      arguments.seed)
        base = config.make_config("paper", backbone_weights=weights, seed=arguments.seed,
                                  batch_size=arguments.batch_size,
                                  input_size=arguments.input_size, records_dir=records_dir,
                                  data_dir=data_dir or config.Config().data_dir)
        results = [run_recipe(dataclasses.replace(base, input_normalization=mode),
                              arguments.steps, arguments.divergence_factor) for mode in modes]
    default_diverged = any(result["diverged"] for result in results
                           if result["normalization"] == default_mode)
    summary = dict(input_size=arguments.input_size, batch_size=arguments.batch_size,
                   steps=arguments.steps, default_normalization=default_mode,
                   backbone=arguments.backbone_weights or "he_normal_imagenet_scale",
                   conv4_2_std=conv4_2_std, default_diverged=default_diverged,
                   results=results)
    print(json.dumps(summary))
    return 1 if default_diverged else 0


if __name__ == "__main__":
    sys.exit(main(parse_arguments()))
