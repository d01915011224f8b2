"""Running a model over an image: input sizing, scales, mirror images, batches, fusion.

The maps this produces go to parsing.py (peaks, PAF limb scores, limb matching and assembly),
the parsing step of Cao et al. (CVPR 2017); the functions here that return people
(parse_image, estimate_poses*) call it.

Coordinate conventions are parsing.py's: grid maps (rows, cols, channels); network-input
pixels map to original-image pixels by x_orig = (x_input - offset_x) / scale_x.

Multi-scale inference (predict_maps, estimate_poses_stream) averages the scales' maps on a
fusion grid (fusion_grid): by default the largest scale's output grid made twice finer, which
locates joints as well as the original's fusion at image resolution at a fraction of its cost
(benchmarks/bench_fusion.py). Images are batched by padded input shape, mirror images in the
same batch, and parsing runs on a worker thread while the network works on the next images.
"""

from __future__ import annotations

import collections
import itertools
import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np

import parsing
from config import FLIP_JOINTS, FLIP_LIMBS, NUM_HEATMAPS, NUM_JOINTS, NUM_LIMBS, NUM_PAFS

# --help text of the inference options (Config fields) that scripts running a model share.
INFERENCE_OPTIONS_HELP = (
    "Inference options: --scales and --flip_test choose the network passes; "
    "--fusion_upsample U fuses the scales on the largest scale's output grid made U times "
    "finer (default 2, as accurate as the original's fusion at image resolution; 0: at image "
    "resolution, slow); --limb_acceptance at_least|more_than accepts a limb when at least "
    "(default) or more than (the original) paf_min_fraction of its samples pass "
    "--paf_threshold; "
    "--integer_output writes whole-pixel coordinates (default: sub-pixel, which the official "
    "metric scores exactly); --input_bucket, --inference_batch and --inference_chunk set the "
    "width buckets, network batch and images per round of the batched path (speed only).")


# Channel j of the maps of a mirrored image, read in the original's order, is channel
# FLIP_HEATMAP_CHANNELS[j] (left and right swap; the background stays last).
FLIP_HEATMAP_CHANNELS = np.array(list(FLIP_JOINTS) + [NUM_JOINTS], dtype=np.int64)
# PAF channels likewise: limb k of the original is limb FLIP_LIMBS[k] of the mirror image, and
# a mirror negates every field's x component.
FLIP_PAF_CHANNELS = np.array([2 * FLIP_LIMBS[k] + i for k in range(NUM_LIMBS) for i in (0, 1)],
                             dtype=np.int64)
FLIP_PAF_SIGNS = np.tile(np.array([-1.0, 1.0], dtype=np.float32), NUM_LIMBS)


# --------------------------------------------------------------------------------------------
def unflip_maps(heatmaps, pafs):
    """Maps of a mirrored image -> maps in the original image's frame and channel order.

    heatmaps (..., rows, cols, NUM_HEATMAPS), pafs (..., rows, cols, NUM_PAFS): mirrored along
    the column axis, left/right channels swapped (FLIP_JOINTS, FLIP_LIMBS) and PAF x negated.
    Exact when the mirror maps cell c to cell cols - 1 - c (the whole padded input mirrored).
    Applying it twice gives the input back.
    """
    heatmaps = np.asarray(heatmaps)[..., ::-1, :][..., FLIP_HEATMAP_CHANNELS]
    pafs = np.asarray(pafs)[..., ::-1, :][..., FLIP_PAF_CHANNELS] * FLIP_PAF_SIGNS
    return heatmaps, pafs.astype(np.float32)


def input_size(height, width, cfg, scale=1.0):
    """(rows, cols) in pixels of an image resized for the network at `scale` (keeps aspect)."""
    rows = max(int(round(cfg.inference_height * scale)), 1)
    cols = max(int(round(width * rows / height)), 1)
    return rows, cols


def padded_size(size, cfg):
    """(rows, cols) of the network input that holds an image resized to size = (rows, cols).

    Rows are padded to a multiple of cfg.stride, columns to a multiple of both cfg.stride and
    cfg.input_bucket pixels: images of nearby aspect ratios then share an input shape, hence a
    batch. Every path pads this way, so one image meets the same input however it is batched.
    """
    rows, cols = size
    step = math.lcm(int(cfg.stride), max(int(cfg.input_bucket), 1))
    return -(-rows // cfg.stride) * cfg.stride, -(-cols // step) * step


INPUT_INTERPOLATIONS = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC,
                        "linear": cv2.INTER_LINEAR}


def resize_interpolation(name, shrinking):
    """The cv2 flag of cfg.input_interpolation `name`; area enlarges by cubic (it would repeat
    pixels there)."""
    if name not in INPUT_INTERPOLATIONS:
        raise ValueError(f"input_interpolation {name!r}: choose from "
                         f"{', '.join(INPUT_INTERPOLATIONS)}")
    if name == "area" and not shrinking:
        return cv2.INTER_CUBIC
    return INPUT_INTERPOLATIONS[name]


def prepare_input(image, size, padded, cfg, reverse_channels=False):
    """An RGB image resized to size = (rows, cols) (cfg.input_interpolation) and padded
    right/bottom to `padded` with cfg.pad_value; float32 RGB 0..255 (the model normalises
    itself). reverse_channels: the image is BGR (a video frame), swapped after resizing, on the
    smaller 8-bit image (a float32 swap of the padded input costs 10x more)."""
    rows, cols = size
    interpolation = resize_interpolation(cfg.input_interpolation, rows < image.shape[0])
    resized = cv2.resize(image, (cols, rows), interpolation=interpolation)
    if reverse_channels:
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    batch_input = np.full(tuple(padded) + (3,), cfg.pad_value, dtype=np.float32)
    batch_input[:rows, :cols] = resized
    return batch_input


class CompiledNetwork:
    """A model whose forward pass is compiled once: call it as model(batch, training=False).

    A Keras model on the TensorFlow backend is wrapped in a tf.function whose input shape is
    left open, so every input shape runs one traced graph: called eagerly, the network spends
    much of a small batch's time in per-layer Python overhead. Other callables (the tests'
    stand-ins, and runtimes.py's exported models: SavedModel, ONNX Runtime, LiteRT) are called
    as they are. The functions below wrap their model once per call (compiled); a caller that
    runs one Keras model over many calls wraps it once itself (runtimes.KerasRuntime does).
    """

    def __init__(self, model):
        self.model = model
        self.forward = _traced_forward(model)

    def __call__(self, batch, training=False):
        return self.forward(batch)


def _traced_forward(model):
    """model(batch, training=False) as a function of the batch, traced when model is Keras."""
    def forward(batch):
        return model(batch, training=False)

    if type(model).__module__.startswith("keras"):
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # No Python control flow to convert: autograph off (it cannot read closures).
            return tf.function(forward, autograph=False, reduce_retracing=True,
                               input_signature=[tf.TensorSpec([None, None, None, 3],
                                                              tf.float32)])
    return forward


def compiled(model):
    """`model` as a CompiledNetwork (itself when it already is one)."""
    return model if isinstance(model, CompiledNetwork) else CompiledNetwork(model)


def network_function(model):
    """A callable: float32 batch (N, H, W, 3) -> the model's outputs (last two: pafs, heatmaps),
    compiled when the model is Keras (see CompiledNetwork)."""
    return compiled(model).forward


def run_network(model, batch, batch_size=8):
    """(heatmaps, pafs) numpy of the model's last stage for a float32 batch, `batch_size`
    inputs per call.

    Raises ValueError when the outputs do not have config's channel counts (a checkpoint built
    for another skeleton).
    """
    function = network_function(model)
    heatmaps, pafs = [], []
    for first in range(0, len(batch), max(int(batch_size), 1)):
        outputs = function(batch[first:first + max(int(batch_size), 1)])
        pafs.append(np.asarray(outputs[-2], dtype=np.float32))
        heatmaps.append(np.asarray(outputs[-1], dtype=np.float32))
    heatmaps, pafs = np.concatenate(heatmaps), np.concatenate(pafs)
    if heatmaps.shape[-1] != NUM_HEATMAPS or pafs.shape[-1] != NUM_PAFS:
        raise ValueError(f"the model outputs {heatmaps.shape[-1]} heatmap and {pafs.shape[-1]} "
                         f"PAF channels, but config.py's skeleton needs {NUM_HEATMAPS} and "
                         f"{NUM_PAFS}: the checkpoint was built for another configuration")
    return heatmaps, pafs


class ScaleMaps(NamedTuple):
    """One image's network maps at one scale, mirror image averaged in.

    heatmaps (rows, cols, NUM_HEATMAPS) and pafs (rows, cols, NUM_PAFS) on the cells of the
    network grid that cover the resized image (the padding's cells are cut off); factors
    (fx, fy): resize factors from the original image to this scale's input.
    """

    heatmaps: np.ndarray
    pafs: np.ndarray
    factors: tuple


def _flip_averaged(model, batch, cfg):
    """(heatmaps, pafs) of a batch, averaged with its mirror images (one network round) when
    cfg.flip_test."""
    count = len(batch)
    if cfg.flip_test:
        batch = np.concatenate([batch, batch[:, :, ::-1]])
    heatmaps, pafs = run_network(model, batch, cfg.inference_batch)
    if cfg.flip_test:
        mirror_heatmaps, mirror_pafs = unflip_maps(heatmaps[count:], pafs[count:])
        heatmaps = (heatmaps[:count] + mirror_heatmaps) / 2.0
        pafs = (pafs[:count] + mirror_pafs) / 2.0
    return heatmaps, pafs


def scale_maps(model, images, cfg, scale):
    """ScaleMaps of each RGB image (H, W, 3) at `scale`, in order.

    Images whose inputs have the same padded shape (padded_size) go through the network
    together, their mirror images in the same batch.
    """
    sizes = [input_size(image.shape[0], image.shape[1], cfg, scale) for image in images]
    groups = {}
    for index, size in enumerate(sizes):
        groups.setdefault(padded_size(size, cfg), []).append(index)
    results = [None] * len(images)
    for padded, members in groups.items():
        batch = np.stack([prepare_input(images[index], sizes[index], padded, cfg)
                          for index in members])
        heatmaps, pafs = _flip_averaged(model, batch, cfg)
        for position, index in enumerate(members):
            height, width = images[index].shape[:2]
            rows, cols = sizes[index]
            # Only the cells over the image are kept: interpolation near the image's border
            # then repeats its last cells instead of mixing in the padding's answers, and the
            # width of the padding (which depends on the bucket) cannot leak into the maps.
            cells = (-(-rows // cfg.stride), -(-cols // cfg.stride))
            results[index] = ScaleMaps(heatmaps[position, :cells[0], :cells[1]],
                                       pafs[position, :cells[0], :cells[1]],
                                       (cols / width, rows / height))
    return results


def network_maps(model, images, cfg):
    """For each RGB image, its list of ScaleMaps (one per cfg.scales); one round per scale."""
    if not len(cfg.scales):
        raise ValueError("cfg.scales is empty: give at least one scale, e.g. --scales 1")
    model = compiled(model)
    per_scale = [scale_maps(model, images, cfg, scale) for scale in cfg.scales]
    return [list(maps) for maps in zip(*per_scale)]


# --------------------------------------------------------------------------------------------
# Fusing the scales
# --------------------------------------------------------------------------------------------
class FusionGrid(NamedTuple):
    """The grid on which one image's maps of every scale are averaged.

    shape (rows, cols); stride: pixels of a reference input per cell; factors (fx, fy): resize
    factors from the original image to that reference input. Cell (r, c) stands for the
    reference-input pixel (c * stride + (stride - 1) / 2, r * stride + (stride - 1) / 2), as
    a network grid does, so grid_mapping gives parse_poses' arguments.
    """

    shape: tuple
    stride: float
    factors: tuple


def fusion_grid(height, width, cfg):
    """The FusionGrid of an image of height x width pixels.

    The original upsamples every scale's maps to the image's resolution and averages there;
    peak finding then dominates its run time. cfg.fusion_upsample = u > 0 fuses instead on the
    output grid of the largest scale made u times finer (stride / u pixels of that scale's
    input), which locates joints as accurately once u >= 2 (benchmarks/bench_fusion.py);
    u = 0 fuses at the image's resolution, as the original.
    """
    upsample = int(cfg.fusion_upsample)
    if upsample <= 0:
        return FusionGrid((int(height), int(width)), 1.0, (1.0, 1.0))
    rows, cols = input_size(height, width, cfg, max(cfg.scales))
    stride = cfg.stride / upsample
    return FusionGrid((math.ceil(rows / stride), math.ceil(cols / stride)), stride,
                      (cols / width, rows / height))


def grid_mapping(grid, height, cfg):
    """parse_poses' keyword arguments for maps on `grid` of an image `height` pixels high.

    stride, scale and offset take grid coordinates to original pixels with cv2.resize's
    pixel-centre convention (x_input + 0.5 = (x_original + 0.5) * factor). smoothing is
    cfg.peak_smoothing cells of the 1x network grid expressed in cells of this grid, so that
    the same number of pixels is smoothed whatever grid the maps are fused on; min_limb_length
    is cfg.min_limb_length converted the same way.
    """
    factor_x, factor_y = grid.factors
    base_cell = cfg.stride * height / max(int(round(cfg.inference_height)), 1)
    cells_per_base_cell = base_cell / (grid.stride / factor_y)
    return {"stride": grid.stride, "scale": (factor_x, factor_y),
            "offset": (0.5 * factor_x - 0.5, 0.5 * factor_y - 0.5),
            "smoothing": float(cfg.peak_smoothing) * cells_per_base_cell,
            "min_limb_length": float(cfg.min_limb_length) * cells_per_base_cell}


def resample(maps, grid, factors, stride, interpolation=cv2.INTER_CUBIC):
    """Maps (rows, cols, C) float32 on one scale's network grid -> grid.shape + (C,).

    factors (fx, fy): the scale's resize factors from the original image; stride: its grid's
    pixels per cell. Fusion cell j's centre, traced to original pixels and into the network
    grid (cv2.resize's pixel-centre convention), lands on network cell
    p = (j + 0.5) * ratio - 0.5 with ratio = grid.stride * factor / (grid factor * stride):
    exactly where cv2.resize with fx = 1 / ratio samples. So cv2.resize does the work (cubic
    with a = -0.75, as the original's upsampling; taps beyond the maps repeat the border),
    after the maps are extended by repeating their last cells so that its output covers the
    whole grid.
    """
    ratio_x = grid.stride * factors[0] / (grid.factors[0] * stride)
    ratio_y = grid.stride * factors[1] / (grid.factors[1] * stride)
    rows, cols = grid.shape
    extra_rows = max(2, math.ceil(rows * ratio_y) - maps.shape[0] + 2)
    extra_cols = max(2, math.ceil(cols * ratio_x) - maps.shape[1] + 2)
    extended = cv2.copyMakeBorder(np.ascontiguousarray(maps, dtype=np.float32), 0, extra_rows,
                                  0, extra_cols, cv2.BORDER_REPLICATE)
    resized = cv2.resize(extended, None, fx=1.0 / ratio_x, fy=1.0 / ratio_y,
                         interpolation=interpolation)
    return resized.reshape(resized.shape[:2] + (maps.shape[2],))[:rows, :cols]


def fuse_scales(per_scale, grid, cfg, interpolation=cv2.INTER_CUBIC):
    """The mean of one image's ScaleMaps on `grid`: (heatmaps (rows, cols, NUM_HEATMAPS),
    pafs (rows, cols, NUM_PAFS)) float32, each scale resampled by `interpolation` (cubic, as
    the original's cv2.resize)."""
    return (_mean_resampled(per_scale, "heatmaps", grid, cfg, interpolation),
            _mean_resampled(per_scale, "pafs", grid, cfg, interpolation))


def _mean_resampled(per_scale, kind, grid, cfg, interpolation):
    """The mean over scales of their `kind` maps ("heatmaps" or "pafs") on `grid`.

    Heatmaps and PAFs are resampled apart, so there is no joined array to make and split again
    into two contiguous copies.
    """
    total = None
    for maps in per_scale:
        resampled = resample(getattr(maps, kind), grid, maps.factors, cfg.stride, interpolation)
        # The first scale's own array is the sum (no zeros to add to): the same floats, and
        # a single scale, the real-time setting, costs no sum or division at all.
        total = resampled if total is None else np.add(total, resampled, out=total)
    if len(per_scale) > 1:
        total /= len(per_scale)
    return np.ascontiguousarray(total)


def fused_maps(per_scale, image_shape, cfg):
    """(heatmaps, pafs, mapping) of one image (see fuse_scales and grid_mapping)."""
    height, width = image_shape[:2]
    grid = fusion_grid(height, width, cfg)
    heatmaps, pafs = fuse_scales(per_scale, grid, cfg)
    return heatmaps, pafs, grid_mapping(grid, height, cfg)


# --------------------------------------------------------------------------------------------
# Images to people: one at a time, in batches, or as a stream
# --------------------------------------------------------------------------------------------
class Estimate(NamedTuple):
    """The people found in one image and the fused maps they were parsed from.

    people float32 (N, NUM_JOINTS, 3) of (x, y, score) in original pixels, missing joints
    zero; scores float32 (N,), best person first; heatmaps, pafs and mapping as predict_maps.
    """

    people: np.ndarray
    scores: np.ndarray
    heatmaps: np.ndarray
    pafs: np.ndarray
    mapping: dict


def clip_to_image(people, height, width):
    """Clamp found joints of (N, NUM_JOINTS, 3) people into an image of height x width."""
    found = people[:, :, 2] > 0
    people[:, :, 0] = np.where(found, np.clip(people[:, :, 0], 0, width - 1), 0)
    people[:, :, 1] = np.where(found, np.clip(people[:, :, 1], 0, height - 1), 0)
    return people


def parse_image(per_scale, image_shape, cfg):
    """Fuse one image's ScaleMaps and parse them into an Estimate."""
    heatmaps, pafs, mapping = fused_maps(per_scale, image_shape, cfg)
    people, scores = parsing.parse_poses(heatmaps, pafs, cfg, **mapping)
    return Estimate(clip_to_image(people, *image_shape[:2]), scores, heatmaps, pafs, mapping)


def _check_image(image, key):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image {key}: expected an RGB array (H, W, 3), got {image.shape}")
    return image


def _later(pool, function, *arguments):
    """A future of function(*arguments): on the pool's threads, or computed now without one."""
    if pool is not None:
        return pool.submit(function, *arguments)
    future = Future()
    future.set_result(function(*arguments))
    return future


def estimate_poses_stream(model, items, cfg, chunk_size=None, workers=1):
    """Yield (key, Estimate) for each (key, RGB image (H, W, 3)) of the iterable `items`, in
    order; keys are anything the caller wants back.

    Images go through the network cfg.inference_chunk at a time (chunk_size overrides it; 1
    is the one-at-a-time path): per scale, images whose inputs have one padded shape form
    batches of cfg.inference_batch inputs, mirror images included. Fusion and parsing of a
    chunk run on `workers` threads while the network works on the next chunk (0: in line),
    so the parser stays off the critical path. A runtime with several streams (its `streams`
    attribute: OpenVINO's, runtime_streams) runs that many chunks' networks at once, each on a
    thread of its own. The results do not depend on chunk_size, workers or streams: every
    image meets the same padded input (padded_size) in any batch.
    """
    chunk_size = max(int(chunk_size or cfg.inference_chunk), 1)
    model = compiled(model)
    streams = max(int(getattr(model.model, "streams", 1)), 1)
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    # One stream runs the network in line, as before: a pool would only add a thread hop.
    network_pool = ThreadPoolExecutor(streams) if streams > 1 else None
    chunks, running, pending = _chunks(items, chunk_size), collections.deque(), []
    try:
        while True:
            # Keep every stream busy: chunks are read ahead while the oldest one computes.
            for chunk in itertools.islice(chunks, streams - len(running)):
                images = [_check_image(image, key) for key, image in chunk]
                running.append((chunk, images, _later(network_pool, network_maps, model,
                                                      images, cfg)))
            if not running:
                break
            chunk, images, maps = running.popleft()
            jobs = [(key, _later(pool, parse_image, per_scale, image.shape, cfg))
                    for (key, _), image, per_scale in zip(chunk, images, maps.result())]
            yield from ((key, job.result()) for key, job in pending)
            pending = jobs
        yield from ((key, job.result()) for key, job in pending)
    finally:
        for executor in (pool, network_pool):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


def _chunks(items, size):
    """Lists of up to `size` consecutive items of the iterable `items`, read as they are asked."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def predict_maps_batch(model, images, cfg):
    """predict_maps for several RGB images, batched; a list of (heatmaps, pafs, mapping)."""
    images = [_check_image(image, index) for index, image in enumerate(images)]
    return [fused_maps(per_scale, image.shape, cfg)
            for image, per_scale in zip(images, network_maps(model, images, cfg))]


def predict_maps(model, image_rgb, cfg):
    """Network maps of one RGB image (H, W, 3), averaged over cfg.scales (and the mirror image
    when cfg.flip_test) on the image's FusionGrid.

    Each scale s resizes the image to round(s * inference_height) rows (keeping the aspect
    ratio), pads it (padded_size) with cfg.pad_value grey, runs the model, and its last-stage
    maps are resampled onto the fusion grid. Returns (heatmaps (rows, cols, NUM_HEATMAPS),
    pafs (rows, cols, NUM_PAFS), mapping) where mapping = {"stride", "scale", "offset",
    "smoothing", "min_limb_length"} are the keyword arguments of parse_poses (the first three:
    grid_to_pixels').
    """
    return predict_maps_batch(model, [image_rgb], cfg)[0]


def estimate_poses_batch(model, images, cfg):
    """estimate_poses for several images (batched through the model); list of (people, scores)."""
    stream = estimate_poses_stream(model, enumerate(images), cfg, chunk_size=len(images) or 1,
                                   workers=0)
    return [(estimate.people, estimate.scores) for _, estimate in stream]


def estimate_poses(model, image_rgb, cfg):
    """People in one RGB image: (people float32 (N, NUM_JOINTS, 3) of (x, y, score) in original
    pixels, missing joints zero; scores float32 (N,)), best person first."""
    return estimate_poses_batch(model, [image_rgb], cfg)[0]
