"""Model-level figures of the paper network on an accelerator, under Keras' JAX backend.

    KERAS_BACKEND=jax python benchmarks/bench_jax.py                 # everything below
    KERAS_BACKEND=jax python benchmarks/bench_jax.py --recipe_steps 0 --batch_sizes 10

`model.py` is pure Keras 3, so the network and its loss (model.stage_losses) run unchanged on
JAX, where TensorFlow is not installed. The training step here is the paper's: the summed Caffe
loss of every stage and branch, L2 weight decay on kernels, SGD with momentum and the original's
learning-rate multipliers (model.learning_rate_multiplier). For plain SGD with momentum,
multiplying a variable's learning rate by f is the same as multiplying its gradient (decay
included) by f, which is how it is written here. The input pipeline is not measured: batches
are made once, with data_generator's own augmentation and targets, from a synthetic AI
Challenger set written by pre-process.py, and stay on the device.

It measures, in this order:
1. the recipe check of benchmarks/bench_recipe.py at full size: the loss every 10 steps for
   each input normalisation, from a VGG19 backbone with ImageNet-scale activations;
2. training-step images/s in float32 and in bfloat16 (Keras' mixed_bfloat16 policy) for each
   batch size;
3. forward latency (batch 1) at 368x368 and 368x656 in both precisions.
Last line: JSON with every figure. Needs no GPU to run (it is slow on a CPU, though).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import config  # noqa: E402


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe_steps", type=int, default=100,
                        help="steps of the recipe check per normalisation (0: skip it)")
    parser.add_argument("--recipe_batch", type=int, default=10, help="batch of the recipe check")
    parser.add_argument("--batch_sizes", default="10,32", help="batches of the throughput runs")
    parser.add_argument("--timed_steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--input_size", type=int, default=368, help="training crop size")
    parser.add_argument("--synthetic_images", type=int, default=80,
                        help="synthetic images the batches are drawn from")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    return parser.parse_args(argv)


def sample_batches(cfg, data_dir, records_dir, count, batch_size, seed):
    """`count` training batches (images, targets dict) made with data_generator's numpy path."""
    import data_generator

    records = data_generator.load_records(
        config.make_config("paper", data_dir=data_dir, records_dir=records_dir), "train")
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        samples = []
        while len(samples) < batch_size:
            index = int(rng.integers(len(records)))
            keypoints, boxes = records.people(index)
            samples.append(data_generator.make_sample(
                cfg, records.paths[index], tuple(records.sizes[index]), keypoints, boxes, True,
                rng))
        batches.append((np.stack([s["image"] for s in samples]).astype(np.float32),
                        {key: np.stack([s[key] for s in samples])
                         for key in ("heatmaps", "pafs", "mask")}))
    return batches


def make_train_step(network, cfg):
    """A jitted paper training step: (state, images, targets) -> (state, loss)."""
    import jax
    import jax.numpy as jnp

    import model as model_module

    factors = [model_module.learning_rate_multiplier(v.path, cfg.stage_lr_multiplier,
                                                     cfg.bias_lr_multiplier)
               for v in network.trainable_variables]
    decayed = [v.path.endswith("kernel") for v in network.trainable_variables]

    def objective(trainable, non_trainable, images, targets):
        outputs, non_trainable = network.stateless_call(trainable, non_trainable, images,
                                                        training=True)
        total = sum(paf + heat for paf, heat in model_module.stage_losses(outputs, targets))
        decay = sum(jnp.sum(jnp.square(w)) for w, d in zip(trainable, decayed) if d)
        return total + 0.5 * cfg.weight_decay * decay, (total, non_trainable)

    gradient = jax.value_and_grad(objective, has_aux=True)

    @jax.jit
    def step(state, images, targets):
        trainable, non_trainable, velocity = state
        (_, (loss, non_trainable)), grads = gradient(trainable, non_trainable, images, targets)
        velocity = [cfg.momentum * v - cfg.learning_rate * f * g
                    for v, f, g in zip(velocity, factors, grads)]
        trainable = [w + v for w, v in zip(trainable, velocity)]
        return (trainable, non_trainable, velocity), loss

    return step


def initial_state(network):
    import jax.numpy as jnp

    trainable = [v.value for v in network.trainable_variables]
    return (trainable, [v.value for v in network.non_trainable_variables],
            [jnp.zeros_like(w) for w in trainable])


def build(cfg, policy):
    import keras

    import model as model_module

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(cfg.seed)
    network = model_module.build_model(cfg)
    model_module.load_backbone_weights(network, cfg.backbone_weights)
    return network


def recipe_check(cfg, batches, steps, mode):
    """Loss every 10 steps of `steps` paper steps with input normalisation `mode`."""
    import dataclasses

    cfg = dataclasses.replace(cfg, input_normalization=mode)
    network = build(cfg, "float32")
    step, state = make_train_step(network, cfg), initial_state(network)
    losses = {}
    for number in range(1, steps + 1):
        images, targets = batches[(number - 1) % len(batches)]
        state, loss = step(state, images, targets)
        if number == 1 or number % 10 == 0 or number == steps:
            losses[number] = float(loss)
            print(f"  recipe {mode:9s} step {number:4d} loss {losses[number]:14.2f}", flush=True)
            if not math.isfinite(losses[number]):
                break
    values = list(losses.values())
    diverged = not all(map(math.isfinite, values)) or max(values) > 10 * values[0]
    return dict(normalization=mode, losses=losses, diverged=diverged)


def throughput(cfg, batch, policy, timed_steps):
    """Training images/s of the paper step at one batch size and precision policy."""
    import jax

    network = build(cfg, policy)
    step, state = make_train_step(network, cfg), initial_state(network)
    images, targets = jax.device_put(batch)  # model-level: the batch stays on the device
    state, loss = step(state, images, targets)  # compile
    loss.block_until_ready()
    started = time.perf_counter()
    for _ in range(timed_steps):
        state, loss = step(state, images, targets)
    loss.block_until_ready()
    seconds = time.perf_counter() - started
    return round(timed_steps * len(images) / seconds, 1)


def forward_latency(cfg, policy, height, width, repeats=30):
    """Median milliseconds of one jitted forward pass of a (1, height, width, 3) image."""
    import jax

    network = build(cfg, policy)
    trainable = [v.value for v in network.trainable_variables]
    non_trainable = [v.value for v in network.non_trainable_variables]

    # The weights are arguments, not constants folded into the compiled program.
    @jax.jit
    def forward(trainable, non_trainable, images):
        outputs, _ = network.stateless_call(trainable, non_trainable, images)
        return outputs[-2], outputs[-1]

    images = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    images = jax.device_put(images)
    jax.block_until_ready(forward(trainable, non_trainable, images))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(forward(trainable, non_trainable, images))
        times.append((time.perf_counter() - started) * 1000.0)
    return round(float(np.median(times)), 2)


def main(arguments):
    import jax

    from bench_recipe import imagenet_scale_vgg19, synthetic_records

    device = str(jax.devices()[0].device_kind)
    print(f"device: {device}", flush=True)
    sizes = [int(size) for size in arguments.batch_sizes.split(",") if size.strip()]
    # The device-resident batches are made once, for the largest batch asked for.
    summary = dict(device=device, backend="jax", input_size=arguments.input_size)
    with tempfile.TemporaryDirectory(prefix="bench_jax-") as workdir:
        weights = os.path.join(workdir, "vgg19_imagenet_scale.weights.h5")
        summary["conv4_2_std"] = round(imagenet_scale_vgg19(weights, arguments.seed), 1)
        data_dir, records_dir = synthetic_records(workdir, arguments.synthetic_images,
                                                  arguments.seed)
        cfg = config.make_config("paper", backbone_weights=weights, seed=arguments.seed,
                                 input_size=arguments.input_size)
        largest = max(sizes + [arguments.recipe_batch])
        pool = sample_batches(cfg, data_dir, records_dir, 4, largest, arguments.seed)
        if arguments.recipe_steps > 0:
            batches = [(images[:arguments.recipe_batch],
                        {key: value[:arguments.recipe_batch] for key, value in targets.items()})
                       for images, targets in pool]
            summary["recipe"] = [recipe_check(cfg, batches, arguments.recipe_steps, mode)
                                 for mode in ("openpose", "imagenet")]
        summary["train_images_per_second"] = {}
        for policy, name in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
            for size in sizes:
                images, targets = pool[0]
                rate = throughput(cfg, (images[:size], {k: v[:size] for k, v in targets.items()}),
                                  policy, arguments.timed_steps)
                summary["train_images_per_second"][f"{name}_batch{size}"] = rate
                print(f"  training {name} batch {size}: {rate} images/s", flush=True)
        summary["forward_ms"] = {}
        for policy, name in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
            for height, width in ((368, 368), (368, 656)):
                value = forward_latency(cfg, policy, height, width)
                summary["forward_ms"][f"{name}_{height}x{width}"] = value
                print(f"  forward {name} {height}x{width}: {value} ms", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(parse_arguments())
