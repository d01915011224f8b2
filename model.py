"""The OpenPose network of Cao et al. (CVPR 2017), a VGG19 front end and T two-branch stages,
and its lightweight variant of Osokin (2018), a MobileNetV1 front end and T = 1 + R stages.

``build_model(cfg)`` returns a Keras Functional model; ``cfg.network`` picks ``openpose`` (the
paper's, below) or ``light`` (the ``light`` preset, "Lightweight OpenPose" further below). Its
input is a float32 RGB image batch (B, H, W, 3) with values 0..255 and any H, W divisible by
``cfg.stride``; the model normalises its input itself (layer ``input_normalization``), so callers
never do. By ``cfg.input_normalization`` the pixels become:

* ``openpose`` (the default): flipped to BGR, VGG's channel order, then (BGR - 128) / 256, what
  the original's Caffe data layer fed its ImageNet VGG19 (the Keras ports' x / 256 - 0.5).
* ``imagenet``: BGR minus the ImageNet mean at 0..255 scale (keras.applications' "caffe" mode),
  the scale the ImageNet VGG19 weights were trained at.
* ``mobilenet`` (the ``light`` preset's): RGB / 127.5 - 1, keras.applications MobileNet's "tf"
  mode, the scale and channel order its ImageNet weights were trained at.

ImageNet VGG19 weights are loaded the same way under the first two; why the paper's recipe needs
``openpose`` is told in docs/training.md ("Input scaling"), measured by benchmarks/bench_recipe.py.
Both networks' outputs are the list

    [stage1_pafs, stage1_heatmaps, stage2_pafs, stage2_heatmaps, ..., stageT_pafs, stageT_heatmaps]

each float32 (even under a mixed-precision policy) of shape (B, H/stride, W/stride, C) with
C = config.NUM_PAFS (branch "L1") or config.NUM_HEATMAPS (branch "L2").

Architecture (layer names as in the original Caffe model):

* ``conv1_1`` ... ``conv4_2``: VGG19's first ten 3x3 convolutions with ReLU. Block widths come from
  ``cfg.backbone_channels`` (block1: conv1_1-2, block2: conv2_1-2, block3: conv3_1-4, block4:
  conv4_1-2). A tuple with fewer than four widths reuses its last width for the remaining blocks,
  so three widths (a, b, c) give block4 c channels, as in the ``cpu`` preset. 2x2 max-pools follow
  blocks 1, 2 and 3 for stride 8, blocks 1 and 2 for stride 4 (log2(stride) pools in general).
* ``conv4_3_CPM`` and ``conv4_4_CPM``: 3x3 convolutions of ``cfg.cpm_channels`` widths (ReLU).
* Stage 1, per branch b in {L1, L2}: ``conv5_1_CPM_Lb`` .. ``conv5_3_CPM_Lb`` (k x k with
  k = ``cfg.stage1_kernel``, ``cfg.stage_channels`` wide, ReLU), ``conv5_4_CPM_Lb`` (1x1,
  ``cfg.stage1_hidden``, ReLU), ``conv5_5_CPM_Lb`` (1x1 to the branch's channels, linear).
* Stage t >= 2: ``concat_stage<t>`` = [previous PAFs, previous heatmaps, features] (the original's
  order), then per branch ``Mconv1_stage<t>_Lb`` .. ``Mconv<n>_stage<t>_Lb`` (n = cfg.stage_convs,
  k x k with k = ``cfg.stage_kernel``, ReLU), ``Mconv<n+1>`` (1x1, ``cfg.stage_channels``, ReLU) and
  ``Mconv<n+2>`` (1x1 to the branch's channels, linear). The paper preset gives Mconv1..Mconv7.

Lightweight OpenPose (``network`` light; Osokin, "Real-time 2D Multi-Person Pose Estimation on
CPU", 2018, and his lightweight-human-pose-estimation.pytorch, followed layer for layer):

* MobileNetV1 (width 1.0) to conv5_5, in keras.applications MobileNet's layer names so that its
  ImageNet weights load by name: ``conv1`` (3x3 stride 2, 32) and blocks k = 1..11, each
  ``conv_dw_k`` (3x3 depthwise) and ``conv_pw_k`` (1x1 to 64, 128, 128, 256, 256, 512, 512 x 5),
  every convolution without bias and followed by ``<name>_bn`` and ReLU6 ``<name>_relu``
  (MobileNet's ReLU6, which its ImageNet weights were trained with, where Osokin's PyTorch copy
  has ReLU). Blocks 2 and 4 have stride 2; block 6 (conv4_2) has stride 1 instead of ImageNet
  MobileNet's 2, for output stride 8, and block 7 (conv5_1) is dilated 2 to widen its view
  again, as in Osokin's code (blocks 8..11 are not dilated there either). ``stride`` must be 8.
* CPM: ``cpm_align`` (1x1, ``cpm_channels[0]``, ReLU), then three depthwise-separable units
  ``cpm_dw<i>`` (3x3 depthwise) + ``cpm_pw<i>`` (1x1), both without bias and with ELU, added
  back to cpm_align's output (``cpm_residual``), then ``cpm_conv`` (3x3, ``cpm_channels[1]``,
  ReLU): the features.
* Stage 1 (Osokin's initial stage): ``initial_stage_conv1..3`` (k x k with k =
  ``cfg.stage1_kernel``, ``cfg.stage_channels`` wide, ReLU) shared by both branches, then per
  branch ``initial_stage_<b>_hidden`` (1x1, ``cfg.stage1_hidden``, ReLU) and
  ``initial_stage_<b>`` (1x1 to the branch's channels, linear).
* Stage t >= 2 (a refinement stage): ``concat_stage<t>`` = [previous PAFs, previous heatmaps,
  features], this project's order (Osokin concatenates [features, heatmaps, PAFs]; the order
  only permutes the first convolution's input channels). Then ``cfg.stage_convs`` residual
  blocks ``refinement_stage<t>_block<j>``: ``_align`` (1x1, ReLU), ``_conv`` (k x k) and
  ``_dilated`` (k x k, dilation 2), the last two with batch normalisation (``_bn``) before their
  ReLU as in Osokin's blocks, with k = ``cfg.stage_kernel`` and all ``cfg.stage_channels`` wide;
  ``_residual`` adds _align's output to _dilated's. Per branch ``refinement_stage<t>_<b>_hidden``
  (1x1, ``cfg.stage_channels``, ReLU) and ``refinement_stage<t>_<b>`` (1x1, linear).
* The light network reads ``stages``, ``stride``, ``cpm_channels``, ``stage_channels``,
  ``stage1_kernel``, ``stage1_hidden``, ``stage_kernel``, ``stage_convs`` and
  ``input_normalization``; ``batch_norm`` must be true (its batch normalisation is part of the
  architecture) and ``backbone_channels`` is not read (MobileNet's widths are fixed). The light
  preset (stages 2, 128 channels, hidden 512, five blocks, 3x3 kernels) has 4,096,658
  parameters, 1,627,840 of them MobileNet's.

Initialisation (biases start at zero; every layer has its own seed derived from ``cfg.seed``,
so the same Config always builds the same weights):

* With a pretrained backbone (``backbone_weights`` imagenet or a file), the layers after it
  (CPM and all stages) are drawn from N(0, 0.01) as in the original. The light network keeps
  the from-scratch initialisation below either way: Osokin's layers after MobileNet start from
  PyTorch's fan-in-scaled default, not Caffe's N(0, 0.01), which would shrink the signal
  through their 20+ convolutions.
* Trained from scratch (``backbone_weights`` none, the ``cpu`` preset), every hidden (ReLU)
  convolution is He-normal so that signals keep their scale through 20+ layers (a depthwise
  kernel counts only its own channel's 3x3 inputs as its fan-in); the first convolution's
  (conv1_1, or the light network's conv1) weights are further divided by the spread of the
  normalised pixels it sees (about 58 under ``imagenet``, 58 / 256 under ``openpose``, 58 / 127.5
  under ``mobilenet``; see ``input_spread``), so that its activations start near unit scale
  whichever normalisation is chosen.
* Each stage's last 1x1 convolution is N(0, 0.01) in both cases, so the untrained network
  predicts nearly-zero maps.

The loss (``masked_l2``, ``stage_losses``) and the original's per-layer learning-rate
multipliers (``learning_rate_multiplier``) are here too, in keras.ops, so that every Keras
backend trains the network the same way (train.py on TensorFlow, benchmarks/bench_jax.py on
JAX). ``load_backbone_weights`` (VGG19's weights into conv1_1 .. conv4_2, or MobileNet's into
the light network's conv1 .. conv_pw_11) and ``load_checkpoint`` are the only functions here that
read files (the weights file or checkpoint the user names); ``build_model`` does no I/O.
``runtimes.load_for_inference`` is how demo.py and evaluate.py load a checkpoint (or an
exported model).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import os
import typing
import zipfile

import keras
import numpy as np
from keras import layers

import config as config_module
import utils
from config import NUM_HEATMAPS, NUM_PAFS

# ImageNet mean in BGR order, as subtracted by keras.applications' "caffe" preprocessing.
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
# The original's normalisation, (BGR - OPENPOSE_CENTRE) / OPENPOSE_DIVISOR.
OPENPOSE_CENTRE, OPENPOSE_DIVISOR = 128.0, 256.0
# keras.applications MobileNet's ("tf" mode) normalisation, RGB / 127.5 - 1.
MOBILENET_CENTRE = 127.5


class Normalization(typing.NamedTuple):
    """An input normalisation: x' = (x - shift) / divisor per channel, in `channels` order."""

    channels: str  # "BGR" (the image's channels are flipped first) or "RGB" (kept).
    shift: tuple  # Per channel, in `channels` order, at 0..255 scale.
    divisor: float


INPUT_NORMALIZATIONS = {
    "openpose": Normalization("BGR", (OPENPOSE_CENTRE,) * 3, OPENPOSE_DIVISOR),
    "imagenet": Normalization("BGR", IMAGENET_MEAN_BGR, 1.0),
    "mobilenet": Normalization("RGB", (MOBILENET_CENTRE,) * 3, MOBILENET_CENTRE),
}
# VGG19's real widths for conv1_1 .. conv4_2; ImageNet weights only fit these.
VGG19_CHANNELS = (64, 128, 256, 512)
# Convolutions per VGG block that the model uses (block4 stops at conv4_2).
VGG_BLOCK_CONVS = (2, 2, 4, 2)
BACKBONE_LAYER_NAMES = tuple(
    f"conv{block + 1}_{index + 1}"
    for block, count in enumerate(VGG_BLOCK_CONVS) for index in range(count)
)
# Spread (standard deviation) of ImageNet pixel values in 0..255 units, about 58 per channel.
PIXEL_SPREAD = 58.0
VGG19_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                   "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
# MobileNetV1 (width 1.0) to conv5_5 for the light network: conv1's width, then per block k =
# 1..11 (conv_dw_k, conv_pw_k) its pointwise width, depthwise stride and depthwise dilation.
MOBILENET_STEM_WIDTH = 32
MOBILENET_BLOCKS = (
    (64, 1, 1), (128, 2, 1), (128, 1, 1), (256, 2, 1), (256, 1, 1),
    # conv4_2: stride 1 where ImageNet MobileNet has 2, so that the output stride stays 8...
    (512, 1, 1),
    # ...and conv5_1 dilated 2 so that the blocks after it still see as far (Osokin's choice).
    (512, 1, 2),
    (512, 1, 1), (512, 1, 1), (512, 1, 1), (512, 1, 1),
)
# The light network's layers that take keras.applications MobileNet's weights, by name.
MOBILENET_LAYER_NAMES = ("conv1", "conv1_bn") + tuple(
    f"conv_{kind}_{block}{suffix}" for block in range(1, len(MOBILENET_BLOCKS) + 1)
    for kind in ("dw", "pw") for suffix in ("", "_bn"))
MOBILENET_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
                       "mobilenet_1_0_224_tf_no_top.h5")
# The only output stride MobileNet to conv5_5 gives with conv4_2's stride removed.
LIGHT_STRIDE = 8
NETWORKS = ("openpose", "light")
BRANCHES = (("L1", NUM_PAFS), ("L2", NUM_HEATMAPS))
# The member of a .keras checkpoint archive that holds the run's config (see embed_config).
EMBEDDED_CONFIG = "openpose_config.json"


def check_input_normalization(name):
    """Return `name` when it is a known input normalisation, else raise ValueError."""
    if name not in INPUT_NORMALIZATIONS:
        raise ValueError(f"input_normalization must be one of {sorted(INPUT_NORMALIZATIONS)}, "
                         f"got {name!r}")
    return name


def input_spread(normalization):
    """Standard deviation of natural-image pixels after `normalization` (58 / divisor)."""
    return PIXEL_SPREAD / INPUT_NORMALIZATIONS[check_input_normalization(normalization)].divisor


def check_network(name):
    """Return `name` when it is a known network (cfg.network), else raise ValueError."""
    if name not in NETWORKS:
        raise ValueError(f"network must be one of {list(NETWORKS)}, got {name!r}")
    return name


@keras.saving.register_keras_serializable(package="openpose")
class InputNormalization(layers.Layer):
    """RGB 0..255 (B, H, W, 3) -> the same shape, in the chosen normalisation's channel order
    (BGR or RGB) and scale: (x - shift) / divisor.

    ``mode``: "openpose" ((BGR - 128) / 256), "imagenet" (BGR - ImageNet mean) or "mobilenet"
    (RGB / 127.5 - 1); see the module docstring. It computes in float32 whatever the global
    policy, so the shift is exact; the first convolution then casts to its own compute dtype.
    """

    def __init__(self, mode="openpose", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mode = check_input_normalization(mode)

    def call(self, images):
        channels, shift, divisor = INPUT_NORMALIZATIONS[self.mode]
        shift = keras.ops.convert_to_tensor(shift, dtype=images.dtype)
        ordered = keras.ops.flip(images, axis=-1) if channels == "BGR" else images
        centred = ordered - shift
        return centred if divisor == 1.0 else centred * (1.0 / divisor)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), mode=self.mode)


class _LayerFactory:
    """Creates convolutions with distinct, reproducible seeds (one per layer, from cfg.seed).

    `pretrained` (a backbone that will be loaded) selects the original's N(0, 0.01) for the
    layers after the backbone; otherwise every hidden convolution is He-normal (see the module
    docstring). Output convolutions are N(0, 0.01) either way.
    """

    def __init__(self, seed, pretrained, batch_norm=False, spread=PIXEL_SPREAD):
        self.seed = int(seed) * 1000
        self.count = 0
        self.pretrained = pretrained
        self.batch_norm = batch_norm
        self.spread = float(spread)

    def initializer(self, role):
        self.count += 1
        seed = self.seed + self.count
        if role == "output" or (role == "head" and self.pretrained):
            return keras.initializers.RandomNormal(stddev=0.01, seed=seed)
        # conv1_1 sees normalised pixels whose spread is `spread` rather than 1, so its weights
        # are that much smaller (or larger) and its activations start near unit scale.
        scale = 2.0 / self.spread ** 2 if role == "first" else 2.0
        return keras.initializers.VarianceScaling(scale=scale, mode="fan_in",
                                                  distribution="truncated_normal", seed=seed)

    def depthwise_initializer(self, channels):
        """He-normal for a 3x3 depthwise kernel (3, 3, channels, 1) trained from scratch.

        Keras counts such a kernel's fan-in as 9 x channels, but each output sees only its own
        channel's 9 inputs, so the scale is `channels` times He's to give variance 2 / 9.
        """
        self.count += 1
        return keras.initializers.VarianceScaling(
            scale=2.0 * channels, mode="fan_in", distribution="truncated_normal",
            seed=self.seed + self.count)

    def conv(self, channels, kernel, name, role="head", dilation=1, batch_norm=None):
        """A same-padded Conv2D; role: first | backbone | head (hidden, ReLU) | output (linear).

        With batch normalisation a hidden convolution becomes conv -> `<name>_bn` -> ReLU, as a
        callable on a tensor like the Conv2D it replaces. `batch_norm` None means the factory's
        (cfg.batch_norm); the light network chooses per layer, where Osokin's network has it.
        """
        hidden = role != "output"
        normalised = self.batch_norm if batch_norm is None else batch_norm
        convolution = layers.Conv2D(
            channels, kernel, padding="same", dilation_rate=dilation,
            activation="relu" if hidden and not normalised else None,
            kernel_initializer=self.initializer(role), bias_initializer="zeros", name=name)
        if not (hidden and normalised):
            return convolution
        normalise = layers.BatchNormalization(name=f"{name}_bn")
        activate = layers.ReLU(name=f"{name}_relu")
        return lambda tensor: activate(normalise(convolution(tensor)))


def uses_pretrained_backbone(cfg):
    """True when cfg.backbone_weights names weights (imagenet or a file) rather than none."""
    return bool(cfg.backbone_weights) and str(cfg.backbone_weights).lower() != "none"


def backbone_widths(cfg):
    """The four VGG block widths of cfg.backbone_channels; missing trailing blocks reuse the
    last width."""
    widths = tuple(int(width) for width in cfg.backbone_channels)
    if not 1 <= len(widths) <= 4 or min(widths) < 1:
        raise ValueError(f"backbone_channels must hold 1 to 4 positive widths (VGG blocks 1-4), "
                         f"got {cfg.backbone_channels!r}")
    return widths + (widths[-1],) * (4 - len(widths))


def _pool_count(stride):
    pools = int(round(math.log2(stride))) if stride >= 1 else -1
    if stride < 1 or 2 ** pools != stride or pools > 3:
        raise ValueError(f"stride must be 1, 2, 4 or 8 (one 2x2 max-pool per doubling after VGG "
                         f"blocks 1-3), got {stride}")
    return pools


def _vgg_front_end(normalised, cfg, factory):
    """VGG19 conv1_1 .. conv4_2 and the two CPM convolutions: normalised images (B, H, W, 3) ->
    features (B, H/stride, W/stride, cpm_channels[1])."""
    x = normalised
    pools = _pool_count(cfg.stride)
    for block, (width, count) in enumerate(zip(backbone_widths(cfg), VGG_BLOCK_CONVS)):
        for index in range(count):
            role = "first" if block == 0 and index == 0 else "backbone"
            x = factory.conv(width, 3, f"conv{block + 1}_{index + 1}", role)(x)
        if block < pools:
            x = layers.MaxPooling2D(2, 2, padding="same", name=f"pool{block + 1}_stage1")(x)
    x = factory.conv(cfg.cpm_channels[0], 3, "conv4_3_CPM")(x)
    return factory.conv(cfg.cpm_channels[1], 3, "conv4_4_CPM")(x)


def _stage_one_branch(features, cfg, factory, branch, channels):
    x = features
    for index in range(1, 4):
        x = factory.conv(cfg.stage_channels, cfg.stage1_kernel, f"conv5_{index}_CPM_{branch}")(x)
    x = factory.conv(cfg.stage1_hidden, 1, f"conv5_4_CPM_{branch}")(x)
    return factory.conv(channels, 1, f"conv5_5_CPM_{branch}", "output")(x)


def _stage_one(features, cfg, factory):
    """[stage-1 PAFs, stage-1 heatmaps], each (B, rows, cols, C), of the openpose network."""
    return [_stage_one_branch(features, cfg, factory, branch, channels)
            for branch, channels in BRANCHES]


def _refinement_stage(inputs, cfg, factory, stage):
    """[PAFs, heatmaps] of the openpose network's stage `stage` >= 2 from its concatenation."""
    return [_refinement_branch(inputs, cfg, factory, stage, branch, channels)
            for branch, channels in BRANCHES]


def _refinement_branch(inputs, cfg, factory, stage, branch, channels):
    x = inputs
    for index in range(1, cfg.stage_convs + 1):
        name = f"Mconv{index}_stage{stage}_{branch}"
        x = factory.conv(cfg.stage_channels, cfg.stage_kernel, name)(x)
    hidden = cfg.stage_convs + 1
    x = factory.conv(cfg.stage_channels, 1, f"Mconv{hidden}_stage{stage}_{branch}")(x)
    return factory.conv(channels, 1, f"Mconv{hidden + 1}_stage{stage}_{branch}", "output")(x)


def _mobilenet_unit(tensor, layer):
    """`layer`, then `<name>_bn` and ReLU6 `<name>_relu`: keras.applications MobileNet's unit
    and names, so that its ImageNet weights load by name (ReLU6 is what they were trained with).
    """
    x = layers.BatchNormalization(name=f"{layer.name}_bn")(layer(tensor))
    return layers.ReLU(6.0, name=f"{layer.name}_relu")(x)


def _mobilenet_front_end(normalised, factory):
    """MobileNetV1 conv1 .. conv_pw_11 at output stride 8: (B, H, W, 3) -> (B, H/8, W/8, 512)."""
    x = _mobilenet_unit(normalised, layers.Conv2D(
        MOBILENET_STEM_WIDTH, 3, strides=2, padding="same", use_bias=False,
        kernel_initializer=factory.initializer("first"), name="conv1"))
    channels = MOBILENET_STEM_WIDTH
    for block, (width, stride, dilation) in enumerate(MOBILENET_BLOCKS, start=1):
        # "same" padding of a stride-2 3x3 on an even size pads one row and column after, as
        # keras.applications' explicit ZeroPadding2D((0, 1), (0, 1)) does.
        x = _mobilenet_unit(x, layers.DepthwiseConv2D(
            3, strides=stride, dilation_rate=dilation, padding="same", use_bias=False,
            depthwise_initializer=factory.depthwise_initializer(channels),
            name=f"conv_dw_{block}"))
        x = _mobilenet_unit(x, layers.Conv2D(
            width, 1, use_bias=False, kernel_initializer=factory.initializer("backbone"),
            name=f"conv_pw_{block}"))
        channels = width
    return x


def _light_front_end(normalised, cfg, factory):
    """MobileNet and Osokin's CPM: normalised images (B, H, W, 3) -> features (B, H/8, W/8,
    cpm_channels[1])."""
    width, output_width = cfg.cpm_channels
    aligned = factory.conv(width, 1, "cpm_align", batch_norm=False)(
        _mobilenet_front_end(normalised, factory))
    trunk = aligned
    for index in range(1, 4):
        trunk = layers.DepthwiseConv2D(
            3, padding="same", use_bias=False, activation="elu",
            depthwise_initializer=factory.depthwise_initializer(width),
            name=f"cpm_dw{index}")(trunk)
        trunk = layers.Conv2D(width, 1, use_bias=False, activation="elu",
                              kernel_initializer=factory.initializer("head"),
                              name=f"cpm_pw{index}")(trunk)
    merged = layers.Add(name="cpm_residual")([aligned, trunk])
    return factory.conv(output_width, 3, "cpm_conv", batch_norm=False)(merged)


def _light_heads(trunk, hidden, factory, prefix):
    """[PAFs, heatmaps] of a light stage's trunk: per branch a 1x1 ReLU `hidden` wide, then a
    linear 1x1 to the branch's channels."""
    outputs = []
    for branch, channels in BRANCHES:
        x = factory.conv(hidden, 1, f"{prefix}_{branch}_hidden", batch_norm=False)(trunk)
        outputs.append(factory.conv(channels, 1, f"{prefix}_{branch}", "output")(x))
    return outputs


def _light_initial_stage(features, cfg, factory):
    """[stage-1 PAFs, stage-1 heatmaps] of the light network (Osokin's initial stage)."""
    x = features
    for index in range(1, 4):
        x = factory.conv(cfg.stage_channels, cfg.stage1_kernel, f"initial_stage_conv{index}",
                         batch_norm=False)(x)
    return _light_heads(x, cfg.stage1_hidden, factory, "initial_stage")


def _light_refinement_stage(inputs, cfg, factory, stage):
    """[PAFs, heatmaps] of the light network's refinement stage `stage` >= 2 from its
    concatenation (B, rows, cols, NUM_PAFS + NUM_HEATMAPS + features)."""
    x, width = inputs, cfg.stage_channels
    for block in range(1, cfg.stage_convs + 1):
        name = f"refinement_stage{stage}_block{block}"
        aligned = factory.conv(width, 1, f"{name}_align", batch_norm=False)(x)
        trunk = factory.conv(width, cfg.stage_kernel, f"{name}_conv", batch_norm=True)(aligned)
        trunk = factory.conv(width, cfg.stage_kernel, f"{name}_dilated", dilation=2,
                             batch_norm=True)(trunk)
        x = layers.Add(name=f"{name}_residual")([aligned, trunk])
    return _light_heads(x, width, factory, f"refinement_stage{stage}")


def _check_light(cfg):
    if cfg.stride != LIGHT_STRIDE:
        raise ValueError(f"stride must be {LIGHT_STRIDE} for network light (MobileNet to "
                         f"conv5_5 with conv4_2's stride removed), got {cfg.stride}")
    if not cfg.batch_norm:
        raise ValueError("batch_norm must be true for network light: the batch normalisation "
                         "of MobileNet and of Osokin's refinement blocks is part of it")


def _network_parts(cfg):
    """(front end, stage 1, stage t >= 2) builders of cfg.network, after checking cfg."""
    if cfg.stages < 1:
        raise ValueError(f"stages must be at least 1, got {cfg.stages}")
    if len(cfg.cpm_channels) != 2:
        raise ValueError(f"cpm_channels must hold two widths, got {cfg.cpm_channels!r}")
    if check_network(cfg.network) == "light":
        _check_light(cfg)
        return _light_front_end, _light_initial_stage, _light_refinement_stage
    return _vgg_front_end, _stage_one, _refinement_stage


def build_model(cfg=None):
    """Build the (untrained) network of `cfg` (default: the paper's); see the module docstring.

    Input (B, H, W, 3) RGB 0..255; outputs [stage1_pafs, stage1_heatmaps, ...], each float32
    (B, H/stride, W/stride, C). No weights are loaded: call
    `load_backbone_weights(model, cfg.backbone_weights)` for that.
    """
    cfg = cfg if cfg is not None else config_module.Config()
    front_end, first_stage, later_stage = _network_parts(cfg)
    light = cfg.network == "light"
    # The light network has batch normalisation where Osokin's has it, chosen per layer, and
    # keeps the from-scratch initialisation with a pretrained backbone (module docstring).
    factory = _LayerFactory(cfg.seed, pretrained=uses_pretrained_backbone(cfg) and not light,
                            batch_norm=cfg.batch_norm and not light,
                            spread=input_spread(cfg.input_normalization))
    images = keras.Input(shape=(None, None, 3), dtype="float32", name="image")
    normalised = InputNormalization(cfg.input_normalization, name="input_normalization")(images)
    features = front_end(normalised, cfg, factory)
    previous = first_stage(features, cfg, factory)
    stage_outputs = [previous]
    for stage in range(2, cfg.stages + 1):
        merged = layers.Concatenate(axis=-1, name=f"concat_stage{stage}")(previous + [features])
        previous = later_stage(merged, cfg, factory, stage)
        stage_outputs.append(previous)
    outputs = []
    for stage, maps in enumerate(stage_outputs, start=1):
        # float32 outputs keep the loss and the parser exact under a float16 policy.
        for kind, tensor in zip(("pafs", "heatmaps"), maps):
            outputs.append(layers.Activation("linear", dtype="float32",
                                             name=f"stage{stage}_{kind}")(tensor))
    return keras.Model(images, outputs, name=f"openpose_{cfg.preset}")


def stage_of_layer(name):
    """Stage number of a layer name: 1 for the backbone and stage 1, t for `Mconv*_stage<t>_*`
    and the light network's `refinement_stage<t>_*`."""
    if name.startswith(("Mconv", "refinement_stage")) and "_stage" in name:
        return int(name.split("_stage", 1)[1].split("_", 1)[0])
    return 1


def learning_rate_multiplier(variable_path, stage_multiplier, bias_multiplier):
    """The original's Caffe lr_mult of the variable at `variable_path` (e.g.
    "Mconv1_stage2_L1/bias"): stage_multiplier in stages 2..T, times bias_multiplier for biases."""
    stage = max(stage_of_layer(part) for part in variable_path.split("/"))
    factor = stage_multiplier if stage >= 2 else 1.0
    if variable_path.endswith("bias"):
        factor *= bias_multiplier
    return float(factor)


# ---------------------------------------------------------------------------------------------
# The loss, in keras.ops so that every Keras backend trains with the same one
# ---------------------------------------------------------------------------------------------
def masked_l2(prediction, target, mask):
    """Caffe's Euclidean loss on the cells where mask is 1: sum(mask*(p-t)^2) / batch / 2.

    prediction, target: (B, rows, cols, C); mask: (B, rows, cols, 1), broadcast over C. The
    sum (not a mean) over cells is the original's: its gradient grows with the grid's size,
    which is what the paper's learning rate was tuned for.
    """
    ops = keras.ops
    prediction = ops.cast(prediction, "float32")
    batch = ops.cast(ops.shape(prediction)[0], "float32")
    squared = ops.square(prediction - ops.cast(target, "float32")) * ops.cast(mask, "float32")
    return ops.sum(squared) / batch / 2.0


def stage_losses(outputs, targets):
    """[(paf_loss, heatmap_loss) per stage] of the model's output list and a target dict of
    "pafs", "heatmaps" and "mask" (see masked_l2 for the shapes)."""
    mask = targets["mask"]
    return [(masked_l2(outputs[index], targets["pafs"], mask),
             masked_l2(outputs[index + 1], targets["heatmaps"], mask))
            for index in range(0, len(outputs), 2)]


class _Application(typing.NamedTuple):
    """A keras.applications network whose ImageNet weights a front end can start from."""

    name: str  # keras.applications' function: VGG19 or MobileNet.
    url: str  # Where keras downloads its include_top=False ImageNet weights from.
    arguments: dict  # Further arguments of that function.


VGG19_APPLICATION = _Application("VGG19", VGG19_NOTOP_URL, {"input_shape": (None, None, 3)})
# MobileNet names its ImageNet file by input size; 224 is the one its ImageNet weights default to.
MOBILENET_APPLICATION = _Application("MobileNet", MOBILENET_NOTOP_URL,
                                     {"input_shape": (224, 224, 3), "alpha": 1.0})


def _source_network(source, application):
    """A keras.applications model (include_top=False) of `application` holding the weights
    `source` names: "imagenet" or a file."""
    build = getattr(keras.applications, application.name)
    if source == "imagenet":
        try:
            return build(include_top=False, weights="imagenet", **application.arguments)
        except Exception as error:  # Keras raises a bare Exception on a failed fetch.
            raise RuntimeError(
                f"could not get the ImageNet {application.name} weights ({type(error).__name__}: "
                f"{error}). Offline? Download {application.url} on a connected machine and pass "
                f"its path with --backbone_weights PATH (or copy it into ~/.keras/models/), or "
                f"train from scratch with --backbone_weights none") from error
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: backbone weights file not found (expected a "
                                f"{application.name} .weights.h5/.h5 weights file or a saved "
                                f".keras/.h5 model)")
    if source.endswith(".keras"):
        return keras.models.load_model(source, compile=False)
    try:
        return build(include_top=False, weights=source, **application.arguments)
    except (ValueError, KeyError, OSError) as weights_error:
        if source.endswith(".weights.h5"):
            # Keras' message lists every layer it could not load; its first line says enough.
            raise ValueError(f"{source}: not the weights of keras.applications."
                             f"{application.name}(include_top=False): "
                             f"{str(weights_error).splitlines()[0]}") from weights_error
        # A legacy .h5 may hold a whole saved model rather than bare weights.
        return keras.models.load_model(source, compile=False)


def load_backbone_weights(model, source):
    """Copy ImageNet-trained front-end weights into `model`; returns the number of layers copied.

    The openpose network takes VGG19's first ten convolutions into conv1_1 .. conv4_2; the light
    network takes MobileNet's (width 1.0) conv1 .. conv_pw_11 with their batch normalisations,
    by name (46 layers). `source` is "imagenet" (keras.applications download, cached in
    ~/.keras/models), a path to a weights file of that network (.weights.h5 of
    keras.applications.VGG19 / MobileNet(include_top=False, weights=None), or Keras' own
    vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 / mobilenet_1_0_224_tf_no_top.h5) or to a
    saved .keras/.h5 model holding those layers, or "none"/"" (keep the random initialisation).
    Raises ValueError when the model's front end does not have the source's shapes (ImageNet
    VGG19 needs backbone_channels (64, 128, 256, 512)).
    """
    if not source or str(source).lower() == "none":
        return 0
    if MOBILENET_LAYER_NAMES[-1] in {layer.name for layer in model.layers}:
        return _load_mobilenet_weights(model, str(source))
    return _load_vgg19_weights(model, str(source))


def _copy_layer_weights(target, origin, source):
    """Set `target`'s weights to `origin`'s, after checking that every array's shape fits."""
    weights = origin.get_weights()
    wanted = [tuple(variable.shape) for variable in target.weights]
    if [array.shape for array in weights] != wanted:
        raise ValueError(f"{source}: layer {origin.name} holds arrays of shapes "
                         f"{[array.shape for array in weights]}, {target.name} needs {wanted}")
    target.set_weights(weights)


def _load_mobilenet_weights(model, source):
    mobilenet = _source_network(source, MOBILENET_APPLICATION)
    held = {layer.name: layer for layer in mobilenet.layers}
    missing = [name for name in MOBILENET_LAYER_NAMES if name not in held]
    if missing:
        raise ValueError(f"{source}: lacks MobileNet's layers {missing[:3]}...; expected "
                         f"keras.applications.MobileNet(alpha=1.0, include_top=False) weights")
    # Keras may skip a layer of a weights file that it cannot match with only a warning, which
    # would copy MobileNet's random initialisation; every copied array must come from the file.
    stored = None if source == "imagenet" else stored_fingerprints(source)
    for name in MOBILENET_LAYER_NAMES:
        if stored is not None and any(_fingerprint(array) not in stored
                                      for array in held[name].get_weights()):
            raise ValueError(f"{source}: layer {name} was not loaded from this file; expected "
                             f"keras.applications.MobileNet(alpha=1.0, include_top=False) "
                             f"weights")
        _copy_layer_weights(model.get_layer(name), held[name], source)
    return len(MOBILENET_LAYER_NAMES)


def _load_vgg19_weights(model, source):
    targets = [model.get_layer(name) for name in BACKBONE_LAYER_NAMES]
    widths = [int(layer.kernel.shape[-1]) for layer in targets]
    vgg_widths = [width for width, count in zip(VGG19_CHANNELS, VGG_BLOCK_CONVS)
                  for _ in range(count)]
    if widths != vgg_widths:
        raise ValueError(
            f"backbone_weights={source!r} needs VGG19's backbone widths {VGG19_CHANNELS}; this "
            f"model's conv1_1..conv4_2 have {widths} channels. "
            f"Use --backbone_weights none for a narrower backbone")
    vgg = _source_network(source, VGG19_APPLICATION)
    sources = [layer for layer in vgg.layers if isinstance(layer, layers.Conv2D)][:len(targets)]
    if len(sources) < len(targets):
        raise ValueError(f"{source}: holds only {len(sources)} convolutions, VGG19 needs 10+")
    for target, origin in zip(targets, sources):
        kernel, bias = origin.get_weights()[:2]
        if kernel.shape != tuple(target.kernel.shape):
            raise ValueError(f"{source}: layer {origin.name} has kernel {kernel.shape}, "
                             f"{target.name} needs {tuple(target.kernel.shape)}")
        target.set_weights([kernel, bias])
    return len(targets)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the problem."""


def embed_config(archive_path, cfg):
    """Store `cfg` inside a saved .keras archive (a zip), so that the checkpoint itself says
    which architecture its weights belong to; Keras ignores the extra member."""
    with zipfile.ZipFile(archive_path, "a") as archive:
        archive.writestr(EMBEDDED_CONFIG, json.dumps(cfg.to_dict(), sort_keys=True))


def embedded_config(archive_path):
    """The Config stored by embed_config in a .keras archive, or None when it holds none."""
    with zipfile.ZipFile(archive_path) as archive:
        if EMBEDDED_CONFIG not in archive.namelist():
            return None
        values = json.loads(archive.read(EMBEDDED_CONFIG))
    return config_module.config_from_dict(values, f"{archive_path}:{EMBEDDED_CONFIG}")


def _fingerprint(array):
    array = np.ascontiguousarray(array)
    return array.shape, str(array.dtype), hashlib.blake2b(array.tobytes(), digest_size=16).digest()


def stored_fingerprints(path):
    """Counter of (shape, dtype, hash) of every array in a .keras archive or .weights.h5 file."""
    import h5py

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            handle = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    else:
        handle = h5py.File(path, "r")
    found = collections.Counter()
    with handle:
        handle.visititems(lambda name, item: found.update([_fingerprint(item[()])])
                          if isinstance(item, h5py.Dataset) else None)
    return found


def check_fully_loaded(variables, path):
    """Raise CheckpointError unless `variables` and the arrays stored in `path` are the same
    multiset: every variable holds an array of the file, and every array of the file is held.

    Keras matches layers by name and skips the ones it cannot match with at most a warning: a
    variable left freshly initialised is found nowhere in the file, and a layer of the file
    that the network lacks (its batch normalisation, say) leaves arrays over. (An all-zero
    variable could pass unloaded; every real network has others.)
    """
    stored = stored_fingerprints(path)
    held = collections.Counter(_fingerprint(np.asarray(v)) for v in variables)
    unloaded, unused = held - stored, stored - held
    if unloaded or unused:
        raise CheckpointError(
            f"{path}: {sum(unloaded.values())} of {len(variables)} variables were not loaded "
            f"from it and {sum(unused.values())} of its arrays were left unused; the file holds "
            f"a different network than the config describes")


def _architecture_mismatch(saved, wanted):
    changed = config_module.changed_fields(saved, wanted, [config_module.ARCHITECTURE])
    return ", ".join(f"{name} {before!r} -> {after!r}" for name, before, after in changed)


def load_checkpoint(path):
    """Load a trained network -> (keras.Model, Config).

    `path` is a checkpoint written by train.py (models/<run>/best.keras or last.keras) or a run
    directory (its best.keras, else last.keras). The run's config.json must sit beside it: the
    network is rebuilt from it under the current dtype policy and the checkpoint's weights are
    loaded into it, so checkpoints load the same way whatever policy trained them. Raises
    CheckpointError (one line naming the file and the problem) when config.json describes
    another architecture than the checkpoint's own stored config, when the file is not a Keras
    archive, or when any variable was not loaded.
    """
    path = _checkpoint_file(path)
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{config_path}: missing; a checkpoint needs the run's "
                              f"config.json beside {os.path.basename(path)}")
    try:
        cfg = config_module.load_config(config_path)
    except (OSError, ValueError) as error:
        # load_config's own messages already start with the file's name.
        reason = utils.os_reason(error) if isinstance(error, OSError) else \
            str(error).replace(f"{config_path}: ", "")
        raise CheckpointError(f"{config_path}: cannot be read as a run's config ({reason})") \
            from error
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a Keras .keras archive (train.py writes those)")
    saved = embedded_config(path)
    if saved is not None and _architecture_mismatch(saved, cfg):
        raise CheckpointError(f"{config_path}: describes another network than "
                              f"{os.path.basename(path)} was saved with "
                              f"({_architecture_mismatch(saved, cfg)})")
    network = build_model(cfg)
    try:
        network.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        raise CheckpointError(f"{path}: cannot be loaded into the network of {config_path} "
                              f"({str(error).splitlines()[0]})") from error
    check_fully_loaded(network.weights, path)
    return network, cfg


def _checkpoint_file(path):
    """The checkpoint file of `path`: itself, or a run directory's best.keras / last.keras."""
    if os.path.isdir(path):
        candidates = [os.path.join(path, name) for name in ("best.keras", "last.keras")]
        found = [candidate for candidate in candidates if os.path.isfile(candidate)]
        if not found:
            raise CheckpointError(f"{path}: no best.keras or last.keras in this run directory")
        return found[0]
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    return path
