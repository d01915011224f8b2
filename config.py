"""One place for the AI Challenger skeleton and every hyperparameter.

The keypoint names, limbs, PAF channel order and flip pairs are defined here once; every other
module imports them. ``Config`` holds every tunable value with one commented default; its
defaults are the paper's (``Config()`` is the ``paper`` preset). Scripts build their command line
from the fields, so ``python train.py --preset cpu --batch_size 4`` (or ``--batch-size 4``) works
for any field and an unknown key is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------
# The AI Challenger 2017 skeleton, in the data set's own order.
# --------------------------------------------------------------------------------------------
JOINT_NAMES = (
    "right_shoulder",  # 0
    "right_elbow",  # 1
    "right_wrist",  # 2
    "left_shoulder",  # 3
    "left_elbow",  # 4
    "left_wrist",  # 5
    "right_hip",  # 6
    "right_knee",  # 7
    "right_ankle",  # 8
    "left_hip",  # 9
    "left_knee",  # 10
    "left_ankle",  # 11
    "head_top",  # 12
    "neck",  # 13
)
NUM_JOINTS = len(JOINT_NAMES)
NECK = 13

# Limbs as (joint_a, joint_b). The first 13 form the tree that joins every keypoint to the neck,
# each limb's joint_a already reached by an earlier limb, so people can be assembled in this
# order. The last two are redundant (shoulder-hip on each side), as the paper's COCO model adds
# redundant connections: they help keep a torso together when the neck is hidden.
LIMBS = (
    (13, 12),  # 0 neck - head top
    (13, 0),  # 1 neck - right shoulder
    (13, 3),  # 2 neck - left shoulder
    (0, 1),  # 3 right shoulder - right elbow
    (3, 4),  # 4 left shoulder - left elbow
    (1, 2),  # 5 right elbow - right wrist
    (4, 5),  # 6 left elbow - left wrist
    (13, 6),  # 7 neck - right hip
    (13, 9),  # 8 neck - left hip
    (6, 7),  # 9 right hip - right knee
    (9, 10),  # 10 left hip - left knee
    (7, 8),  # 11 right knee - right ankle
    (10, 11),  # 12 left knee - left ankle
    (0, 6),  # 13 right shoulder - right hip (redundant)
    (3, 9),  # 14 left shoulder - left hip (redundant)
)
NUM_LIMBS = len(LIMBS)
NUM_TREE_LIMBS = 13

# Channel layout of the network outputs. PAF channels 2k and 2k+1 are the x and y components of
# LIMBS[k]; heatmap channel j is joint j and the last heatmap channel is the background.
NUM_HEATMAPS = NUM_JOINTS + 1
NUM_PAFS = 2 * NUM_LIMBS
BACKGROUND_CHANNEL = NUM_JOINTS

# Left/right joint pairs that swap under a horizontal flip.
FLIP_PAIRS = ((0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11))


def _flip_joint_permutation():
    permutation = list(range(NUM_JOINTS))
    for left, right in FLIP_PAIRS:
        permutation[left], permutation[right] = right, left
    return tuple(permutation)


# FLIP_JOINTS[j] is the joint that j becomes in a mirrored image.
FLIP_JOINTS = _flip_joint_permutation()
# FLIP_LIMBS[k] is the limb that limb k becomes in a mirrored image (its PAF x flips sign too).
FLIP_LIMBS = tuple(
    LIMBS.index((FLIP_JOINTS[a], FLIP_JOINTS[b])) for a, b in LIMBS
)

# AI Challenger visibility flags.
VISIBLE, OCCLUDED, UNLABELLED = 1, 2, 3

# Drawing colours, BGR for OpenCV: right side warm, left side cool, centre green.
JOINT_COLORS = (
    (0, 0, 255), (0, 85, 255), (0, 170, 255),  # right arm
    (255, 0, 0), (255, 85, 0), (255, 170, 0),  # left arm
    (0, 255, 255), (0, 200, 200), (0, 140, 140),  # right leg
    (255, 0, 255), (200, 0, 200), (140, 0, 140),  # left leg
    (0, 255, 0), (0, 160, 0),  # head top, neck
)
LIMB_COLORS = tuple(JOINT_COLORS[b] for _, b in LIMBS)

# The official AI Challenger per-keypoint OKS constants (the evaluator doubles them).
AIC_OKS_SIGMAS = (
    0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642,
    0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173,
)


class AicRelease(typing.NamedTuple):
    """One official AI Challenger 2017 keypoint release, as its zip unpacks.

    folder: the top folder, which is also the zip's name without ".zip"; images: the folder of
    its images inside it; annotations: its annotation file inside it (None for the test sets).
    """

    folder: str
    images: str
    annotations: str | None


# The official releases by split name: pre-process.py, synthetic.py and quickstart.py use these.
AIC_RELEASES = {
    "train": AicRelease("ai_challenger_keypoint_train_20170909", "keypoint_train_images_20170902",
                        "keypoint_train_annotations_20170909.json"),
    "val": AicRelease("ai_challenger_keypoint_validation_20170911",
                      "keypoint_validation_images_20170911",
                      "keypoint_validation_annotations_20170911.json"),
    "test_a": AicRelease("ai_challenger_keypoint_test_a_20180103",
                         "keypoint_test_a_images_20180103", None),
    "test_b": AicRelease("ai_challenger_keypoint_test_b_20180103",
                         "keypoint_test_b_images_20180103", None),
}


# Every Config field says its role once, in its metadata; what must match a checkpoint or must
# not change on --resume is derived from the roles (see fields_with_role), never listed by hand.
PATHS = "paths"  # Where files are; free to change at any time.
DATA = "data"  # How pre-process.py validates records.
ARCHITECTURE = "architecture"  # Defines the network's layers: a checkpoint needs the same values.
TARGETS = "targets"  # How training targets are rendered.
AUGMENTATION = "augmentation"  # Random sample transforms and the loss mask.
TRAINING = "training"  # Optimisation and run control; free to change on --resume.
TRAINING_STATE = "training_state"  # Shapes the saved optimiser state: fixed on --resume.
INFERENCE = "inference"  # Test-time scales and the parser; free to change for any checkpoint.
VIDEO = "video"  # How demo.py follows people through a video; free to change for any checkpoint.
ROLES = (PATHS, DATA, ARCHITECTURE, TARGETS, AUGMENTATION, TRAINING, TRAINING_STATE, INFERENCE,
         VIDEO)


def _role(role):
    """A factory of dataclass fields of `role`: paths(...), architecture(...) and so on."""
    def make(default):
        return dataclasses.field(default=default, metadata={"role": role})

    make.__name__ = role
    return make


paths, data, architecture, targets = _role(PATHS), _role(DATA), _role(ARCHITECTURE), _role(TARGETS)
augmentation, training = _role(AUGMENTATION), _role(TRAINING)
training_state, inference = _role(TRAINING_STATE), _role(INFERENCE)
video = _role(VIDEO)


@dataclass
class Config:
    """Every hyperparameter, one commented default each; the defaults are the paper's."""

    preset: str = "paper"  # Name of the preset these values started from.

    # Paths (relative to the working directory).
    data_dir: str = paths("data")  # Official zips/folders and the synthetic set live here.
    records_dir: str = paths("data/records")  # pre-process.py writes {split}.jsonl records here.
    models_dir: str = paths("models")  # Checkpoints go to models/<run_name>/.
    logs_dir: str = paths("logs")  # TensorBoard and CSV logs go to logs/<run_name>/.
    run_name: str = paths("")  # Empty means the preset's name.
    # Pixels a keypoint/box may stray outside image or box.
    annotation_tolerance: float = data(2.0)

    # Network geometry.
    # Square training crop in pixels (the network itself takes any multiple of the stride).
    input_size: int = augmentation(368)
    # openpose: VGG19 and Cao's stages | light: MobileNetV1 and Osokin's lightweight stages
    # (see model.py's docstring for which of the fields below each network reads).
    network: str = architecture("openpose")
    stride: int = architecture(8)  # Output grid step in input pixels (8: three 2x2 pools; 4: two).
    # Number of stages (stage 1, then refinement stages 2..T), each with a PAF and a heatmap
    # branch; the light network's stage 1 is Osokin's initial stage, so stages = 1 + his
    # num_refinement_stages.
    stages: int = architecture(6)
    # VGG19 block widths up to conv4_2.
    backbone_channels: tuple = architecture((64, 128, 256, 512))
    # conv4_3_CPM and conv4_4_CPM widths (light: cpm_align with its trunk, and cpm_conv).
    cpm_channels: tuple = architecture((256, 128))
    stage_channels: int = architecture(128)  # Width of every hidden stage convolution.
    stage1_kernel: int = architecture(3)  # Kernel of stage 1's three hidden convolutions.
    # Width of stage 1's 1x1 convolution before its outputs.
    stage1_hidden: int = architecture(512)
    stage_kernel: int = architecture(7)  # Kernel of the hidden convolutions in stages 2..T.
    # Number of k x k convolutions in stages 2..T (light: residual blocks per refinement stage).
    stage_convs: int = architecture(5)
    # imagenet | PATH to saved VGG19 (openpose) or MobileNet (light) weights | none.
    backbone_weights: str = training("imagenet")
    # Batch normalisation after hidden convolutions (not in the paper).
    batch_norm: bool = architecture(False)
    # openpose: (BGR-128)/256 | imagenet: BGR-mean | mobilenet: RGB/127.5-1 (MobileNet's).
    input_normalization: str = architecture("openpose")

    # Targets.
    heatmap_sigma: float = targets(7.0)  # Gaussian sigma of the confidence maps, in input pixels.
    paf_width: float = targets(1.0)  # Half-width of a limb's PAF, in grid cells.

    # Augmentation (one affine warp per sample).
    scale_min: float = augmentation(0.5)  # Smallest random scale multiplier.
    scale_max: float = augmentation(1.1)  # Largest random scale multiplier.
    # Scale 1 makes the main person this fraction of the crop.
    target_person_height: float = augmentation(0.6)
    max_rotation: float = augmentation(40.0)  # Rotation drawn uniformly from +-this, in degrees.
    center_jitter: float = augmentation(40.0)  # Crop centre jitter, in input pixels.
    # Chance of a horizontal flip that swaps left and right.
    flip_probability: float = augmentation(0.5)
    # Strength of random brightness/contrast/saturation changes.
    color_jitter: float = augmentation(0.1)
    pad_value: int = augmentation(128)  # Grey used where the crop falls outside the image.
    # Loss ignores cells over padding (the original counts them).
    ignore_padding: bool = augmentation(False)
    # How samples are made: tf, TensorFlow graph ops (tf_pipeline.py) | numpy, the NumPy/OpenCV
    # reference. Both follow the same rules but draw different random numbers.
    pipeline: str = training("tf")
    # TensorFlow's intra-op thread pool: -1 (auto) is 1 when the model trains on GPUs and
    # TensorFlow's default otherwise, 0 TensorFlow's default (a thread per core), N threads.
    # See dataset.intra_op_threads.
    intra_op_threads: int = training(-1)

    # Optimisation.
    batch_size: int = training(10)  # Global batch size (split across replicas).
    optimizer: str = training_state("sgd")  # sgd | adam | adamw.
    learning_rate: float = training(4e-5)  # Base learning rate (Caffe Euclidean loss scale).
    momentum: float = training(0.9)  # SGD momentum.
    weight_decay: float = training(5e-4)  # L2 weight decay.
    # Learning-rate factor of stages 2..T, as the original did.
    stage_lr_multiplier: float = training(4.0)
    # Learning-rate factor of biases (Caffe's lr_mult 2).
    bias_lr_multiplier: float = training(2.0)
    lr_decay_steps: int = training(136106)  # Step decay period in optimizer steps.
    lr_decay_rate: float = training(0.333)  # Step decay factor.
    epochs: int = training(100)  # Training epochs.
    steps_per_epoch: int = training(0)  # 0: one pass over the training records.
    validation_steps: int = training(0)  # 0: one pass over the validation records.
    # Stop training after this wall time; 0 means no limit.
    max_train_minutes: float = training(0.0)
    # Of that time budget, the last fraction over which the learning rate falls linearly to
    # zero (0: off, the paper's step schedule alone). See callbacks.anneal_factor.
    lr_anneal_fraction: float = training(0.0)
    # Polyak averaging of the weights: after every step the average moves (1 - m) of the way to
    # the weights. Validation, best.keras and last.keras use the average; training goes on
    # from the weights (0: off, as the original). See trainer.averaged_weights.
    ema_momentum: float = training_state(0.0)
    # Epochs without improvement before stopping; 0 is off.
    early_stopping_patience: int = training(0)
    reduce_lr_patience: int = training(0)  # Epochs without improvement before lr/3; 0 is off.
    log_images_every: int = training(500)  # Steps between TensorBoard map images.
    # Also checkpoint every N steps; 0: only at epoch ends.
    checkpoint_every_steps: int = training(1000)
    seed: int = training(0)  # Seed of shuffling, augmentation and initialisation.
    strategy: str = training("auto")  # auto | mirrored | multiworker (tf.distribute).
    # grpc://host:port of a tf.data service dispatcher that makes the training batches, or "".
    data_service_address: str = training("")
    mixed_precision: bool = training_state(False)  # Train with the mixed_float16 policy.
    jit_compile: bool = training(False)  # Compile the training step with XLA.
    resume: bool = training(False)  # Continue the run from its last checkpoint.

    # Inference and parsing.
    inference_height: int = inference(368)  # Images are resized to this height before the network.
    # How images are resized for the network: area | cubic | linear (area enlarges by cubic).
    # Area averages every pixel it covers: 0.002-0.005 mAP above cubic on quick-start models,
    # but OpenCV's slow path at non-integer ratios (a 720x720 frame to 368: 5.1 against 1.8 CPU
    # ms, benchmarks/bench_frame.py); cubic is what the original ran.
    input_interpolation: str = inference("area")
    # Multi-scale test factors of inference_height.
    scales: tuple = inference((0.5, 1.0, 1.5, 2.0))
    flip_test: bool = inference(False)  # Also run the mirrored image and average.
    peak_threshold: float = inference(0.1)  # Minimum heatmap value of a joint candidate.
    # Heatmap smoothing before NMS, in grid cells (paper: 3 px).
    peak_smoothing: float = inference(0.5)
    # Strongest candidates kept per joint (bounds noisy maps).
    max_peaks_per_joint: int = inference(32)
    paf_threshold: float = inference(0.05)  # Minimum PAF alignment of a sample point.
    # Shortest limb joined, in cells of the 1x network grid (0: any length above zero, the
    # original). A net that puts a second joint's peak on the first (wrists on elbows) would
    # otherwise join the pair as a limb of no length, whose PAF integral is of its start cell.
    min_limb_length: float = inference(0.0)
    paf_samples: int = inference(10)  # Points sampled along a candidate limb.
    # Fraction of sample points that must pass paf_threshold.
    paf_min_fraction: float = inference(0.8)
    min_parts: int = inference(4)  # People with fewer joints are dropped.
    min_person_score: float = inference(0.4)  # People whose mean part score is lower are dropped.
    # optimal: Hungarian per limb (paper) | greedy: best first.
    limb_matching: str = inference("optimal")
    # Join split people when gap <= ratio*limbs*limb length.
    fragment_join_ratio: float = inference(1.0)
    # at_least: >= paf_min_fraction of the samples pass | more_than: > (the original, 9 of 10);
    # at_least scored higher on the oracle and on the quick-start model (docs/benchmarks.md).
    limb_acceptance: str = inference("at_least")
    # Fuse scales on the largest scale's grid x this (0: image pixels).
    fusion_upsample: int = inference(2)
    # Pad input widths to a multiple of this (pixels): shared batches.
    input_bucket: int = inference(32)
    inference_batch: int = inference(8)  # Network inputs per call (images and mirror images).
    inference_chunk: int = inference(32)  # Images per network round; parsing overlaps the next.
    integer_output: bool = inference(False)  # Round submission coordinates to whole pixels.
    # CPU threads of ONNX Runtime, OpenVINO, LiteRT and TensorFlow (0: every core of the machine).
    runtime_threads: int = inference(0)
    # OpenVINO streams: network rounds (inference_chunk images) run at once, each on its own
    # thread, the runtime's threads split between them; from 1 to runtime_threads (the cores
    # when 0). More than 1 pays on videos and image folders where one round cannot keep every
    # thread busy.
    runtime_streams: int = inference(1)
    # OpenVINO's inference precision: f32 | bf16 (where the CPU has bfloat16, else f32) | auto
    # (bf16 where possible, silently). runtimes.OpenVINORuntime.precision says which ran.
    openvino_precision: str = inference("f32")
    # Keep memory freed by numpy and OpenCV in the process (glibc's mallopt) rather than give
    # it back to the kernel and fault fresh pages in for every frame's arrays:
    # utils.retain_freed_memory, benchmarks/bench_frame.py.
    retain_freed_memory: bool = inference(True)

    # Video (demo.py --video): tracking people across frames and smoothing their keypoints.
    # A detection continues a track when their keypoint similarity (OKS) is at least this.
    track_min_oks: float = video(0.2)
    # Tracking's OKS tolerances are the metric's per-keypoint constants times this: people
    # move between frames, and the metric's constants allow for annotation noise only.
    track_oks_scale: float = video(4.0)
    # Frames a track may go unmatched (occluded, missed) before its id retires.
    track_max_missed: int = video(4)
    # One-Euro smoothing of tracked keypoints (drawings and track lines; never --json).
    temporal_smoothing: bool = video(True)
    one_euro_min_cutoff: float = video(1.0)  # Cutoff (Hz) at rest: lower smooths more.
    # Cutoff increase per pixel/s of speed: higher lags less on fast moves.
    one_euro_beta: float = video(0.05)
    one_euro_derivative_cutoff: float = video(1.0)  # Cutoff (Hz) of the speed estimate.

    def to_dict(self):
        return dataclasses.asdict(self)

    @property
    def name(self):
        """The run's name: run_name, or the preset's name when run_name is empty."""
        return self.run_name or self.preset


def fields_with_role(*roles):
    """Names of the Config fields whose role is one of `roles`, in definition order."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {ROLES}")
    return tuple(field.name for field in dataclasses.fields(Config)
                 if field.metadata.get("role") in roles)


def changed_fields(before, after, roles):
    """[(name, before value, after value)] of the fields of `roles` that differ."""
    return [(name, getattr(before, name), getattr(after, name))
            for name in fields_with_role(*roles) if getattr(before, name) != getattr(after, name)]


def inference_config(saved, overrides):
    """The config to run a trained network with: `saved` (its run's config) with `overrides`
    ({field: value}, the command line's) on top.

    Only fields of the INFERENCE, VIDEO and PATHS roles may be overridden; the others describe
    the network or how it was trained, so ValueError names the first one given.
    """
    allowed = fields_with_role(INFERENCE, VIDEO, PATHS)
    fixed = [name for name in overrides if name not in allowed]
    if fixed:
        raise ValueError(f"--{fixed[0]} is fixed by the checkpoint's config.json; only inference "
                         f"settings and paths can be changed: {', '.join(allowed)}")
    return dataclasses.replace(saved, **overrides)


# Presets are overrides of the paper defaults. `cpu` trains a useful model on two cores: a
# smaller input, three thinner stages, Adam, and single-scale inference.
PRESETS = {
    "paper": {},
    "cpu": dict(
        input_size=160,
        stride=4,
        stages=3,
        backbone_channels=(16, 32, 64),
        cpm_channels=(64, 32),
        stage_channels=32,
        stage1_hidden=64,
        stage_kernel=3,
        stage_convs=3,
        backbone_weights="none",
        batch_norm=True,
        heatmap_sigma=4.0,
        paf_width=1.0,
        scale_min=0.6,
        scale_max=1.5,
        max_rotation=30.0,
        center_jitter=16.0,
        ignore_padding=True,
        batch_size=8,
        optimizer="adam",
        # 2e-3 against 1e-3 in the 20-minute quick start, two seeds on a 2-core AVX2 machine:
        # mAP 0.373 against 0.319 and 0.322 (seed 0), 0.264 against 0.121 (seed 1).
        learning_rate=2e-3,
        weight_decay=0.0,
        stage_lr_multiplier=1.0,
        bias_lr_multiplier=1.0,
        lr_decay_steps=4000,
        lr_decay_rate=0.5,
        epochs=1000,
        steps_per_epoch=200,
        validation_steps=10,
        max_train_minutes=20.0,
        log_images_every=200,
        checkpoint_every_steps=100,
        # XLA fuses the small network's batch norms and activations into its convolutions:
        # 1.19x less CPU time per step and quick-start mAP 0.319 and 0.322 against 0.219 on a
        # 2-core AVX2 machine (docs/benchmarks.md).
        jit_compile=True,
        inference_height=160,
        scales=(1.0, 1.5, 2.0),
        flip_test=True,
        # The small network's maps hold weak duplicate people (left/right confusions) that the
        # fine fusion grid resolves; dropping people below 0.6 scored best (docs/benchmarks.md).
        min_person_score=0.6,
        # The small network's wrist channel also peaks on the elbows, and its PAFs are faint:
        # limbs shorter than one cell are refused, and a limb is accepted on half of its samples
        # pointing along it at all, from peaks above 0.05. Quick-start mAP 0.5650 and 0.6459
        # against 0.4941 and 0.5183 (two training seeds; 0.5550 and 0.6455 against 0.4988 and
        # 0.5237 on a synthetic set of another seed, docs/benchmarks.md).
        min_limb_length=1.0,
        peak_threshold=0.05,
        paf_threshold=0.0,
        paf_min_fraction=0.5,
    ),
}


# What a saved config without an input_normalization field was trained with.
LEGACY_INPUT_NORMALIZATION = "imagenet"


# `light` is Lightweight OpenPose (Osokin 2018): MobileNetV1 to conv5_5 at output stride 8, his
# CPM, initial stage and one refinement stage, 128 channels wide (model.py's docstring). It is
# meant for the CPU quick start as much as `cpu` is, so everything that is not architecture
# (crop size, targets, augmentation, Adam, schedule, time limit, inference) is cpu's, and like
# cpu it trains from scratch (backbone_weights none), since the ImageNet download needs a
# network; `--backbone_weights imagenet` or a PATH to MobileNet's weights file loads them.
# backbone_channels is not read by the light network (MobileNet's widths are fixed); it is reset
# to the paper's default rather than cpu's narrow widths, which would suggest a thinned backbone.
PRESETS["light"] = dict(
    PRESETS["cpu"],
    network="light",
    stride=8,
    stages=2,
    backbone_channels=Config().backbone_channels,
    cpm_channels=(128, 128),
    stage_channels=128,
    stage1_kernel=3,
    stage1_hidden=512,
    stage_kernel=3,
    stage_convs=5,
    batch_norm=True,
    input_normalization="mobilenet",
    # Not under XLA: its depthwise convolutions train 4x slower there on a CPU (1.95 against
    # 7.86 images/s, benchmarks/bench_train.py --presets light --jit_compile).
    jit_compile=False,
    # cpu's shortest limb in input pixels (4): half of this grid's 8-pixel cells. A whole cell
    # costs 0.044 oracle mAP on the real annotations' small people, half a cell 0.006.
    min_limb_length=0.5,
)


# `tiny` is the cpu preset shrunk to a network that builds and trains in about a second: the
# shared configuration of the tests, and a smoke test of any script (--preset tiny).
PRESETS["tiny"] = dict(
    PRESETS["cpu"],
    input_size=32,
    stages=2,
    backbone_channels=(8, 8, 8),
    cpm_channels=(8, 8),
    stage_channels=8,
    stage1_hidden=8,
    stage_convs=1,
    heatmap_sigma=2.0,
    batch_size=2,
    epochs=2,
    steps_per_epoch=2,
    validation_steps=1,
    max_train_minutes=0.0,
    jit_compile=False,  # Its steps take milliseconds: compiling them would cost the tests more.
    log_images_every=2,
    inference_height=32,
    scales=(1.0,),
    flip_test=False,
)


def make_config(preset="paper", **overrides):
    """Return the Config of a preset with the given field overrides applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values = dict(PRESETS[preset], preset=preset)
    values.update(overrides)
    unknown = set(values) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    return Config(**values)


def _field_types():
    """{field name: annotated type} of Config (resolving the annotations once, not per field)."""
    return typing.get_type_hints(Config)


def _parse_bool(text):
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_tuple(text):
    """Parse '0.5,1,1.5' into a tuple of numbers (ints where they are whole)."""
    items = [item for item in str(text).replace(" ", "").split(",") if item]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    try:
        return tuple(int(item) if item.lstrip("-").isdigit() else float(item) for item in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def add_config_arguments(parser):
    """Add --preset and one --field (or --field-name) option per Config field to `parser`.

    Boolean fields accept a bare flag (``--flip_test``) or a value (``--flip_test false``).
    """
    group = parser.add_argument_group("configuration (any Config field)")
    group.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                       help="start from this preset (default: paper)")
    defaults, types = Config(), _field_types()
    for field in dataclasses.fields(Config):
        if field.name == "preset":
            continue
        kind = types[field.name]
        flags = ["--" + field.name]
        if "_" in field.name:
            flags.append("--" + field.name.replace("_", "-"))
        default_text = getattr(defaults, field.name)
        common = dict(dest="cfg_" + field.name, default=None,
                      help=f"paper default: {default_text}")
        if kind is bool:
            group.add_argument(*flags, nargs="?", const=True, type=_parse_bool, metavar="BOOL",
                               **common)
        elif kind is tuple:
            group.add_argument(*flags, type=_parse_tuple, metavar="A,B,..", **common)
        else:
            group.add_argument(*flags, type=kind, metavar=kind.__name__.upper(), **common)
    return parser


def overrides_from_args(args):
    """The Config fields given on the command line (options left out are not included)."""
    return {key[len("cfg_"):]: value for key, value in vars(args).items()
            if key.startswith("cfg_") and value is not None}


def config_from_args(args):
    """Build the Config from parsed arguments: the preset, then every option given."""
    return make_config(args.preset, **overrides_from_args(args))


def parse_config(argv=None, description=None):
    """Parse a command line made only of config options (for scripts with no flags of their own)."""
    parser = add_config_arguments(argparse.ArgumentParser(description=description))
    return config_from_args(parser.parse_args(argv))


def save_config(cfg, path):
    """Write the resolved config as JSON, atomically."""
    from utils import atomic_write_text

    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load_config(path):
    """Read a config saved by save_config; lists come back as tuples, unknown keys are errors."""
    with open(path, "r", encoding="utf-8") as handle:
        values = json.load(handle)
    return config_from_dict(values, path)


def config_from_dict(values, where):
    """The Config of a saved dict (lists become tuples); `where` names it in errors."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a JSON object of config fields")
    field_names = {f.name for f in dataclasses.fields(Config)}
    unknown = set(values) - field_names
    if unknown:
        raise ValueError(f"{where}: unknown config keys {sorted(unknown)}")
    values = {key: tuple(value) if isinstance(value, list) else value
              for key, value in values.items()}
    # Runs saved before input_normalization existed all fed the network ImageNet-mean inputs.
    values.setdefault("input_normalization", LEGACY_INPUT_NORMALIZATION)
    return Config(**values)


def run_directories(cfg):
    """Return (model_dir, log_dir) of this run: models/<name>/ and logs/<name>/."""
    return (os.path.join(cfg.models_dir, cfg.name), os.path.join(cfg.logs_dir, cfg.name))
