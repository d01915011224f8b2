"""Training targets and samples, the NumPy/OpenCV reference: records, augmentation, targets.

Targets
    ``render_targets`` draws the paper's confidence maps (one Gaussian per labelled joint,
    combined over people by max, plus a background channel) and part affinity fields (the unit
    vector of each limb on the cells near it, averaged over the people whose limbs overlap).
    Grid convention, shared with inference.py: grid cell (r, c) stands for the input-image pixel
    (x, y) = (c * stride + (stride - 1) / 2, r * stride + (stride - 1) / 2); pixel coordinates put
    pixel centres on integers. Every array of points is (x, y[, v]); every map is (rows, cols, C).

Samples
    Training: one affine warp per sample (``cv2.warpAffine``, bilinear, grey border
    ``cfg.pad_value``) that combines a random scale relative to a chosen person (that person's
    box height becomes ``target_person_height * input_size`` times a factor drawn from
    [scale_min, scale_max]), a rotation of +-max_rotation degrees, a crop of input_size centred on
    the person with +-center_jitter pixels of jitter, and a horizontal flip that swaps left and
    right joints (config.FLIP_JOINTS). An image without annotated people is centred and fitted
    into the crop instead. Keypoints go through the same matrix and keep their labels when they
    leave the crop (docs/training.md says why). Colour jitter (brightness, contrast, saturation,
    each a factor in 1 +- color_jitter) is applied after the warp, so the grey padding is jittered
    too. Validation: the whole image is resized (INTER_AREA) to fit input_size and padded at the
    bottom/right (a letterbox with its origin at the top left, so that mapping back to the
    image is a plain division), with no randomness at all.

    Large JPEGs that are going to be shrunk by 2x or more are decoded at 1/2, 1/4 or 1/8 size
    by libjpeg's DCT scaling (``cv2.IMREAD_REDUCED_COLOR_*``): several times faster than a full
    decode, and less aliased than shrinking with a bilinear warp.

Loss mask (grid resolution, 1 = the loss counts, 0 = ignored)
    * Padding, when ``cfg.ignore_padding`` (the ``cpu`` preset): cells whose input pixel maps
      outside the source image, since the network cannot see anything there. The original
      counts them (zero targets on grey), and so does the ``paper`` preset.
    * Unannotated people: AI Challenger has no crowd regions and no segmentation masks, but a
      box may come without a single labelled joint. Such a person is in the picture yet makes no
      targets, so the loss would punish the network for seeing them; we zero the cells inside
      that person's (warped) box, as the original zeroed COCO people without keypoints. A person
      whose labelled joints merely left the crop is NOT masked: their joints really are absent
      from the crop, so the empty targets there are right. People with some labelled joints
      are not masked either: AIC uses v = 3 for joints outside the picture (or not labelled),
      and masking whole boxes for that would throw away most crowded scenes.

Two pipelines
    These functions are the NumPy/OpenCV reference of every sample step and the "numpy"
    pipeline of dataset.make_dataset (cfg.pipeline "numpy"); tf_pipeline.py does the same steps
    as TensorFlow graph ops (the default), and the tests hold the two equal.

Bad input
    A sample whose image is missing, unreadable, truncated or of another size than its record
    says is skipped and counted by reason (``skip_counts`` of dataset.make_dataset; the first
    few files of each reason are logged by name). Far-away, duplicate or non-finite keypoints,
    people with one joint or none, images without people, grey or 4-channel files and extreme aspect
    ratios all give finite targets. Only when every one of many consecutive samples is skipped
    does the pipeline stop with an error, since then the data set itself is broken.

Command line: ``python data_generator.py --show N`` writes figures of N samples' targets into
images/ (see --help).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import threading

import cv2
import numpy as np

import config
import utils
from config import FLIP_JOINTS, LIMBS, NUM_HEATMAPS, NUM_JOINTS, NUM_LIMBS, NUM_PAFS

# Cells exactly on a limb's boundary are counted as on it despite floating-point noise.
BOUNDARY_EPSILON = 1e-6
# Limbs shorter than this (in grid cells) have no direction and make no PAF.
MIN_LIMB_LENGTH = 1e-6
# A person is never treated as smaller than this many pixels when choosing the scale, so a box
# of zero height cannot ask for an infinite zoom.
MIN_PERSON_HEIGHT = 8.0
# The random scale is clipped to this range for the same reason.
SCALE_LIMITS = (1e-3, 32.0)
# Skip reasons; code 0 means the sample is good. The numpy function returns the code.
SKIP_REASONS = ("ok", "missing_image", "unreadable_image", "size_mismatch", "error")
# How many different files are logged with their reason (each once); the rest are only counted.
LOGGED_SKIPS_PER_REASON = 5
# The pipeline gives up when this many samples in a row were skipped.
MAX_CONSECUTIVE_SKIPS = 200

LOGGER = logging.getLogger("data_generator")


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def labelled_joints(keypoints):
    """Boolean (..., ) mask of the joints that make targets: v in {1, 2} and finite x, y.

    keypoints: (..., 3) array of (x, y, v).
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    visible = (keypoints[..., 2] == config.VISIBLE) | (keypoints[..., 2] == config.OCCLUDED)
    return visible & np.isfinite(keypoints[..., 0]) & np.isfinite(keypoints[..., 1])


def render_heatmaps(keypoints, grid_shape, stride, sigma):
    """Confidence maps of the labelled joints: float32 (rows, cols, NUM_HEATMAPS).

    keypoints: (P, 14, 3) (x, y, v) in input pixels, inside the grid's extent or not (a joint
    outside still lights the cells within reach of its Gaussian). Channel j holds max over
    people of exp(-d^2 / 2 sigma^2), d the pixel distance from the cell's pixel (grid convention in the
    module docstring) to joint j; the last channel is 1 - max over the joint channels.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
    heatmaps = np.zeros((rows, cols, NUM_HEATMAPS), dtype=np.float32)
    labelled = labelled_joints(keypoints)
    if labelled.any():
        offset = (stride - 1) / 2.0
        xs = np.arange(cols, dtype=np.float64) * stride + offset
        ys = np.arange(rows, dtype=np.float64) * stride + offset
        people = keypoints[labelled.any(axis=1)]
        weight = labelled_joints(people)[:, None, :]  # (P, 1, 14): unlabelled joints draw 0
        points = np.where(weight[..., None], people[:, None, :, :2], 0.0)  # (P, 1, 14, 2)
        # The Gaussian is separable: one row and one column of exp() per joint, then an outer
        # product laid out channel-last (P, rows, cols, 14), so the max over people is a plain
        # contiguous reduction.
        # Joints far outside the crop may square to inf; exp(-inf) = 0 is the right value.
        with np.errstate(over="ignore"):
            along_x = np.exp(-((xs[None, :, None] - points[..., 0]) ** 2) / (2 * sigma * sigma))
            along_y = np.exp(-((ys[None, :, None] - points[..., 1]) ** 2) / (2 * sigma * sigma))
        along_x = (along_x * weight).astype(np.float32)
        gaussians = along_y.astype(np.float32)[:, :, None, :] * along_x[:, None, :, :]
        heatmaps[:, :, :NUM_JOINTS] = gaussians.max(axis=0)
    heatmaps[:, :, -1] = 1.0 - heatmaps[:, :, :NUM_JOINTS].max(axis=2)
    return heatmaps


def render_pafs(keypoints, grid_shape, stride, paf_width):
    """Part affinity fields: float32 (rows, cols, 2 * NUM_LIMBS), channels (2k, 2k+1) = (x, y).

    keypoints: (P, 14, 3) (x, y, v) in input pixels; a limb with one or both ends outside the
    grid draws on the grid cells along it. Working in grid units (cell (r, c) sits at
    (c, r)), a cell is on limb k = (a, b) of a person when its projection onto a->b lies within
    the segment and its distance from the line is <= paf_width; there the field is the unit
    vector a->b. Overlapping people are averaged by the number of people on the cell.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
    pafs = np.zeros((rows, cols, NUM_PAFS), dtype=np.float32)
    limbs = np.asarray(LIMBS)
    labelled = labelled_joints(keypoints)
    points = np.where(labelled[..., None], keypoints[..., :2], 0.0)
    grid_points = (points - (stride - 1) / 2.0) / stride
    start, end = grid_points[:, limbs[:, 0]], grid_points[:, limbs[:, 1]]
    vectors = end - start
    lengths = np.hypot(vectors[..., 0], vectors[..., 1])
    valid = labelled[:, limbs[:, 0]] & labelled[:, limbs[:, 1]] & (lengths > MIN_LIMB_LENGTH)
    people, limb_ids = np.nonzero(valid)
    if not len(limb_ids):
        return pafs
    lengths = lengths[people, limb_ids]
    units = vectors[people, limb_ids] / lengths[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        cell_rows, cell_cols, instance = _cells_on_limbs(
            start[people, limb_ids], end[people, limb_ids], units, lengths, rows, cols,
            paf_width)
    # Sum the unit vectors and count the people on each (cell, limb) with bincount, then
    # divide: the paper's average over the people whose limbs overlap.
    flat = (cell_rows * cols + cell_cols) * NUM_LIMBS + limb_ids[instance]
    size = rows * cols * NUM_LIMBS
    counts = np.maximum(np.bincount(flat, minlength=size), 1).reshape(rows, cols, NUM_LIMBS)
    for component in (0, 1):
        sums = np.bincount(flat, weights=units[instance, component], minlength=size)
        pafs[:, :, component::2] = sums.reshape(rows, cols, NUM_LIMBS) / counts
    return pafs


def _cells_on_limbs(starts, ends, units, lengths, rows, cols, paf_width):
    """(rows, cols, instances) int arrays of every (cell, limb instance) pair on a limb.

    starts, ends, units: (N, 2) (x, y) in grid units; lengths: (N,). Each limb is tested only
    in a window around its bounding box (padded by paf_width); all windows share the largest
    window's size so the test is one vectorised expression.
    """
    margin = paf_width + 4 * BOUNDARY_EPSILON
    limits = np.array([cols - 1, rows - 1])
    low = np.clip(np.floor(np.minimum(starts, ends) - margin), 0, limits).astype(np.int64)
    high = np.clip(np.ceil(np.maximum(starts, ends) + margin), 0, limits).astype(np.int64)
    width, height = (high - low + 1).max(axis=0)
    cell_x = low[:, :1] + np.arange(width)  # (N, width) absolute columns
    cell_y = low[:, 1:] + np.arange(height)  # (N, height) absolute rows
    dx, dy = cell_x - starts[:, :1], cell_y - starts[:, 1:]
    ux, uy = units[:, :1], units[:, 1:]
    # along = dx*ux + dy*uy and across = dx*uy - dy*ux, built from row and column parts so
    # that only the final sums are full (N, height, width) arrays.
    along = (dx * ux)[:, None, :] + (dy * uy)[:, :, None]
    across = np.abs((dx * uy)[:, None, :] - (dy * ux)[:, :, None])
    on = along >= -BOUNDARY_EPSILON
    on &= along <= lengths[:, None, None] + BOUNDARY_EPSILON
    on &= across <= paf_width + BOUNDARY_EPSILON
    on &= (cell_x < cols)[:, None, :] & (cell_y < rows)[:, :, None]
    instance, window_row, window_col = np.nonzero(on)
    return cell_y[instance, window_row], cell_x[instance, window_col], instance


def render_targets(keypoints, grid_shape, stride, sigma, paf_width):
    """Training targets of one sample.

    keypoints: float (P, 14, 3) of (x, y, v) in input-image pixels (P may be 0); only v in
    {1, 2} with finite x, y make targets. grid_shape: (rows, cols). stride: input pixels per
    cell. sigma: Gaussian sigma in input pixels. paf_width: PAF half-width in grid cells.
    Returns (heatmaps float32 (rows, cols, 15), pafs float32 (rows, cols, 30)); see
    render_heatmaps and render_pafs. Never NaN.
    """
    return (render_heatmaps(keypoints, grid_shape, stride, sigma),
            render_pafs(keypoints, grid_shape, stride, paf_width))


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
class Records:
    """The records of one split held as compact arrays (210k Python dicts would not fit).

    image_ids, paths: lists of str (paths joined with data_dir); sizes: int64 (N, 2) of
    (width, height); offsets: int64 (N + 1,), people of record i are rows
    offsets[i]:offsets[i+1] of keypoints float32 (M, 14, 3) and boxes float32 (M, 4)
    (x1, y1, x2, y2; NaN when the record has none).
    """

    def __init__(self, image_ids, paths, sizes, offsets, keypoints, boxes):
        self.image_ids, self.paths = image_ids, paths
        self.sizes, self.offsets = sizes, offsets
        self.keypoints, self.boxes = keypoints, boxes

    def __len__(self):
        return len(self.paths)

    def people(self, index):
        """(keypoints (P, 14, 3) float64, boxes (P, 4) float64) of record `index`."""
        begin, end = self.offsets[index], self.offsets[index + 1]
        return (self.keypoints[begin:end].astype(np.float64),
                self.boxes[begin:end].astype(np.float64))


def parse_record(record):
    """One record dict -> (image_id, image_path, (w, h), keypoints (P,14,3), boxes (P,4)).

    Raises ValueError saying what is wrong. Non-finite keypoints become unlabelled.
    """
    image_id, image_path = str(record["image_id"]), str(record["image_path"])
    width, height = int(record.get("width") or 0), int(record.get("height") or 0)
    people = record.get("people") or []
    keypoints = np.zeros((len(people), NUM_JOINTS, 3), dtype=np.float32)
    boxes = np.full((len(people), 4), np.nan, dtype=np.float32)
    for row, person in enumerate(people):
        values = np.asarray(person["keypoints"], dtype=np.float64)
        if values.size != NUM_JOINTS * 3:
            raise ValueError(f"person {row} has {values.size} keypoint numbers, expected 42")
        values = values.reshape(NUM_JOINTS, 3)
        bad = ~np.isfinite(values).all(axis=1)
        values[bad] = (0.0, 0.0, config.UNLABELLED)
        keypoints[row] = values
        box = person.get("box")
        if box is not None and len(box) == 4:
            boxes[row] = np.asarray(box, dtype=np.float64)
    return image_id, image_path, (width, height), keypoints, boxes


def load_records(cfg, split):
    """Read {cfg.records_dir}/{split}.jsonl into Records; bad lines are skipped and logged."""
    path = os.path.join(cfg.records_dir, f"{split}.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no records for split {split!r}; run pre-process.py first")
    parsed, bad = [], 0
    with open(path, "r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                parsed.append(parse_record(json.loads(line)))
            except (ValueError, KeyError, TypeError) as error:
                bad += 1
                if bad <= LOGGED_SKIPS_PER_REASON:
                    LOGGER.warning("%s:%d: bad record skipped: %s", path, line_number, error)
    if bad:
        LOGGER.warning("%s: %d bad records skipped", path, bad)
    if not parsed:
        raise ValueError(f"{path}: no usable records")
    counts = [len(item[3]) for item in parsed]
    return Records(
        image_ids=[item[0] for item in parsed],
        paths=[os.path.join(cfg.data_dir, item[1]) for item in parsed],
        sizes=np.asarray([item[2] for item in parsed], dtype=np.int64).reshape(-1, 2),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        keypoints=np.concatenate([item[3] for item in parsed]).reshape(-1, NUM_JOINTS, 3),
        boxes=np.concatenate([item[4] for item in parsed]).reshape(-1, 4))


# ---------------------------------------------------------------------------------------------
# Geometry: 3x3 affine matrices mapping source pixels (x, y, 1) to input pixels
# ---------------------------------------------------------------------------------------------
def person_frames(keypoints, boxes, width, height):
    """Centre (P, 2) (x, y), height (P,) in pixels and anchorable (P,) bool of each person.

    The box (clipped to the image) is used when it is valid, else the extent of the labelled
    joints (clipped to the image, so a far-away outlier cannot drag the crop off the picture).
    A person is anchorable (can be the centre of a training crop) when it has a labelled joint.
    """
    labelled = labelled_joints(keypoints)
    limits = np.array([width - 1.0, height - 1.0])
    points = np.clip(np.nan_to_num(keypoints[..., :2]), 0.0, np.maximum(limits, 0.0))
    low = np.where(labelled[..., None], points, np.inf).min(axis=1)
    high = np.where(labelled[..., None], points, -np.inf).max(axis=1)
    clipped = np.clip(np.nan_to_num(boxes, nan=-1.0), 0.0, np.tile(np.maximum(limits, 0), 2))
    box_ok = np.isfinite(boxes).all(axis=1) & (clipped[:, 2] > clipped[:, 0]) & (
        clipped[:, 3] > clipped[:, 1])
    low = np.where(box_ok[:, None], clipped[:, :2], low)
    high = np.where(box_ok[:, None], clipped[:, 2:], high)
    anchorable = labelled.any(axis=1)
    found = anchorable | box_ok
    # A person with neither has low = inf and high = -inf; np.where drops the NaN they make.
    with np.errstate(invalid="ignore"):
        centres = np.where(found[:, None], (low + high) / 2.0, limits / 2.0)
    heights = np.where(found, high[:, 1] - low[:, 1], 0.0)
    floor = max(MIN_PERSON_HEIGHT, 0.05 * max(width, height))
    return centres, np.maximum(heights, floor), anchorable


def affine(scale=1.0, angle_degrees=0.0, flip=False, centre=(0.0, 0.0), target=(0.0, 0.0)):
    """3x3 matrix: move `centre` to the origin, mirror x if flip, scale, rotate, move to target."""
    radians = math.radians(angle_degrees)
    cos, sin = math.cos(radians) * scale, math.sin(radians) * scale
    mirror = -1.0 if flip else 1.0
    # The rotation-scale block times diag(mirror, 1), applied after the translation to 0.
    linear = np.array([[cos * mirror, -sin], [sin * mirror, cos]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = np.asarray(target, dtype=np.float64) - linear @ np.asarray(centre, float)
    return matrix


def training_transform(cfg, keypoints, boxes, width, height, rng):
    """Random (matrix 3x3 source->input pixels, flipped bool) of one training sample.

    The crop centres on a random anchorable person (else the image centre, with the image's
    longer side as the size to fit) as described in the module docstring.
    """
    centres, heights, anchorable = person_frames(keypoints, boxes, width, height)
    size = cfg.input_size
    candidates = np.flatnonzero(anchorable)
    if len(candidates):
        chosen = candidates[rng.integers(len(candidates))]
        centre, base = centres[chosen], cfg.target_person_height * size / heights[chosen]
    else:
        centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        base = size / max(width, height, 1)
    scale = float(np.clip(base * rng.uniform(cfg.scale_min, cfg.scale_max), *SCALE_LIMITS))
    angle = rng.uniform(-cfg.max_rotation, cfg.max_rotation)
    jitter = rng.uniform(-cfg.center_jitter, cfg.center_jitter, size=2)
    flipped = bool(rng.random() < cfg.flip_probability)
    target = (size - 1) / 2.0 + jitter
    return affine(scale, angle, flipped, centre, target), flipped


def letterbox_transform(cfg, width, height):
    """(matrix 3x3, (new_width, new_height)): fit the image into input_size, top-left aligned.

    Follows cv2.resize's pixel-centre convention x' = (x + 0.5) * new_w / w - 0.5.
    """
    factor = cfg.input_size / max(width, height, 1)
    new_size = (max(1, min(cfg.input_size, round(width * factor))),
                max(1, min(cfg.input_size, round(height * factor))))
    sx, sy = new_size[0] / max(width, 1), new_size[1] / max(height, 1)
    matrix = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return matrix, new_size


def transform_keypoints(keypoints, matrix, flipped):
    """Apply `matrix` to keypoints (P, 14, 3) of (x, y, v); swap left/right joints if flipped.

    Labelled joints keep their v wherever they land, inside the crop or not (see the module
    docstring: their targets reach into the crop); unlabelled ones, and any that land on a
    non-finite position, come back as (0, 0, 3). Returns a new float64 array.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
    with np.errstate(over="ignore", invalid="ignore"):
        points = keypoints[..., :2] @ matrix[:2, :2].T + matrix[:2, 2]
    keep = labelled_joints(keypoints) & np.isfinite(points).all(axis=-1)
    result = np.zeros_like(keypoints)
    result[..., :2] = np.where(keep[..., None], points, 0.0)
    result[..., 2] = np.where(keep, keypoints[..., 2], config.UNLABELLED)
    if flipped:
        # In the mirrored picture the joint called j is the one that was FLIP_JOINTS[j].
        result = result[:, list(FLIP_JOINTS)]
    return result


def inverse_affine(matrix):
    """3x3 inverse of an affine matrix in closed form (tf_pipeline.inverse_affine is the same
    arithmetic, so both pipelines map cells back to identical source positions)."""
    (a, b, tx), (c, d, ty) = matrix[0], matrix[1]
    determinant = a * d - b * c
    ia, ib, ic, id_ = d / determinant, -b / determinant, -c / determinant, a / determinant
    return np.array([[ia, ib, -(ia * tx + ib * ty)], [ic, id_, -(ic * tx + id_ * ty)],
                     [0.0, 0.0, 1.0]])


def loss_mask(matrix, width, height, grid_shape, stride, masked_boxes, ignore_padding=True):
    """float32 (rows, cols, 1): 0 on cells inside a masked box, and on cells over padding when
    ignore_padding; else 1.

    matrix: 3x3 source->input pixels; masked_boxes: (K, 4) source-pixel boxes (x1, y1, x2, y2) to
    ignore. Each cell's pixel (grid convention in the module docstring) is mapped back to the
    source and tested against the image and the boxes, so a rotated box masks exactly the cells
    whose centres fall inside it. The original counts padding (its miss-mask is padded with
    "keep"), so ignore_padding=False is the paper preset's; see the module docstring.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    offset = (stride - 1) / 2.0
    inverse = inverse_affine(np.asarray(matrix, dtype=np.float64))
    grid_x = np.arange(cols, dtype=np.float64)[None, :] * stride + offset
    grid_y = np.arange(rows, dtype=np.float64)[:, None] * stride + offset
    source_x = inverse[0, 0] * grid_x + inverse[0, 1] * grid_y + inverse[0, 2]  # (rows, cols)
    source_y = inverse[1, 0] * grid_x + inverse[1, 1] * grid_y + inverse[1, 2]
    keep = np.ones((rows, cols), bool)
    if ignore_padding:
        keep = ((source_x >= -0.5) & (source_x <= width - 0.5) &
                (source_y >= -0.5) & (source_y <= height - 0.5))
    boxes = np.asarray(masked_boxes, dtype=np.float64).reshape(-1, 4)
    in_box = ((source_x[..., None] >= boxes[:, 0]) & (source_x[..., None] <= boxes[:, 2]) &
              (source_y[..., None] >= boxes[:, 1]) & (source_y[..., None] <= boxes[:, 3]))
    keep &= ~in_box.any(axis=2)
    return keep.astype(np.float32)[:, :, None]


def unannotated_boxes(keypoints, boxes, width, height):
    """(K, 4) boxes of the people with a finite box and no labelled joint (the masked ones).

    The boxes are clipped to the image (a pixel beyond it): only the picture can be masked, and
    absurd coordinates become ordinary numbers.
    """
    finite = np.isfinite(boxes).all(axis=1)
    chosen = finite & ~labelled_joints(keypoints).any(axis=1)
    return np.clip(boxes[chosen], -1.0, np.array([width, height, width, height], float))


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
class SkipSample(Exception):
    """A sample that cannot be made; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def reduction_factor(path, scale):
    """1, 2, 4 or 8: how much smaller a JPEG may be decoded when it is shrunk by `scale`."""
    if not path.lower().endswith((".jpg", ".jpeg")):
        return 1
    factor = 1
    while factor < 8 and scale * factor * 2 <= 1.0:
        factor *= 2
    return factor


def decode_image(path, factor=1):
    """utils.decode_image (uint8 BGR (H, W, 3) at 1/factor size) raising SkipSample instead:
    "missing_image" for a file that is not there, "unreadable_image" for any other problem."""
    try:
        return utils.decode_image(path, factor)
    except utils.ImageError as error:
        reason = "missing_image" if error.reason == "missing" else "unreadable_image"
        raise SkipSample(reason, str(error)) from error


def reduced_to_source(image, width, height, path, factor=1):
    """3x3 matrix from the pixels of an image decoded at 1/factor size to the record's pixels.

    Raises SkipSample when the decoded size does not match the record's (width, height).
    """
    decoded_height, decoded_width = image.shape[:2]
    fx, fy = width / decoded_width, height / decoded_height
    if abs(decoded_width - width / factor) > 1 or abs(decoded_height - height / factor) > 1:
        raise SkipSample("size_mismatch", f"{path}: image is {decoded_width}x{decoded_height}, "
                         f"record says {width}x{height}")
    # A reduced pixel i covers source pixels [i*f, (i+1)*f), so its centre is f*i + (f-1)/2.
    return np.array([[fx, 0.0, (fx - 1) / 2.0], [0.0, fy, (fy - 1) / 2.0], [0.0, 0.0, 1.0]])


def jitter_colors(image, strength, rng):
    """Random brightness, contrast and saturation factors in 1 +- strength (uint8 BGR in/out)."""
    if strength <= 0:
        return image
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    mean = float(np.mean(cv2.mean(image)[:3]))
    # Brightness then contrast about the (brightened) mean, folded into one lookup table.
    table = np.clip(np.rint(contrast * brightness * np.arange(256)
                            + (1 - contrast) * brightness * mean), 0, 255).astype(np.uint8)
    image = cv2.LUT(image, table)
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(image, saturation, grey, 1.0 - saturation, 0.0)


def warp_image(image, matrix, size, pad_value):
    """cv2.warpAffine of a BGR image by a 3x3 matrix into (size, size), grey border."""
    return cv2.warpAffine(image, matrix[:2], (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(pad_value,) * 3)


def letterbox_image(image, new_size, size, pad_value):
    """Resize (INTER_AREA) to new_size=(w, h) and pad bottom/right to (size, size)."""
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[:new_size[1], :new_size[0]] = cv2.resize(image, new_size, interpolation=cv2.INTER_AREA)
    return canvas


# ---------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------
def make_sample(cfg, path, size, keypoints, boxes, training, rng):
    """Decode, transform and render one sample.

    size: the record's (width, height) (<= 0 means unknown: the decoded size is used).
    Returns dict image (S, S, 3) uint8 RGB, heatmaps, pafs, mask (grid maps, float32) and
    keypoints (P, 14, 3) in input pixels. Raises SkipSample for unusable images.
    """
    width, height = size
    if width <= 0 or height <= 0:
        height, width = decode_image(path).shape[:2]
    if training:
        matrix, flipped = training_transform(cfg, keypoints, boxes, width, height, rng)
        factor = reduction_factor(path, math.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    else:
        (matrix, new_size), flipped = letterbox_transform(cfg, width, height), False
        factor = reduction_factor(path, max(matrix[0, 0], matrix[1, 1]))
    image = decode_image(path, factor)
    from_decoded = reduced_to_source(image, width, height, path, factor)
    if training:
        image = warp_image(image, matrix @ from_decoded, cfg.input_size, cfg.pad_value)
        image = jitter_colors(image, cfg.color_jitter, rng)
    else:
        image = letterbox_image(image, new_size, cfg.input_size, cfg.pad_value)
    return dict(image=cv2.cvtColor(image, cv2.COLOR_BGR2RGB),
                **sample_targets(cfg, matrix, flipped, keypoints, boxes, width, height))


def sample_targets(cfg, matrix, flipped, keypoints, boxes, width, height):
    """Targets of one sample given its transform: heatmaps, pafs, mask and keypoints."""
    grid = (cfg.input_size // cfg.stride, cfg.input_size // cfg.stride)
    moved = transform_keypoints(keypoints, matrix, flipped)
    heatmaps, pafs = render_targets(moved, grid, cfg.stride, cfg.heatmap_sigma, cfg.paf_width)
    hidden_people = unannotated_boxes(keypoints, boxes, width, height)
    mask = loss_mask(matrix, width, height, grid, cfg.stride, hidden_people,
                     cfg.ignore_padding)
    return dict(heatmaps=heatmaps, pafs=pafs, mask=mask, keypoints=moved)


class SkipReporter:
    """Counts skipped samples by reason into `skip_counts` (a Counter) and logs the first
    LOGGED_SKIPS_PER_REASON files of each reason, each file once. Thread-safe."""

    def __init__(self, skip_counts=None):
        self.skip_counts = skip_counts if skip_counts is not None else collections.Counter()
        self.lock = threading.Lock()
        self.logged = set()  # (reason, path) pairs already logged, so repeats stay quiet

    def report(self, reason, path, message):
        """Count one skipped sample; log `message` unless this file or reason was logged enough."""
        with self.lock:
            self.skip_counts[reason] += 1
            logged = sum(1 for known, _ in self.logged if known == reason)
            log = (reason, path) not in self.logged and logged < LOGGED_SKIPS_PER_REASON
            if log:
                self.logged.add((reason, path))
        if log:
            LOGGER.warning("sample skipped (%s): %s", reason, message)


class SampleLoader:
    """The numpy side of the numpy pipeline: (record index, draw number) -> sample arrays +
    reason code.

    Thread-safe; counts skipped samples by reason into `skip_counts` (a Counter).
    """

    def __init__(self, cfg, records, training, skip_counts=None, shard_index=0):
        self.cfg, self.records, self.training = cfg, records, training
        self.reporter = SkipReporter(skip_counts)
        self.skip_counts = self.reporter.skip_counts
        self.shard_index = shard_index
        self.lock = threading.Lock()
        self.consecutive_skips = 0
        grid = cfg.input_size // cfg.stride
        self.empty = (np.zeros((cfg.input_size, cfg.input_size, 3), np.uint8),
                      np.zeros((grid, grid, NUM_HEATMAPS), np.float32),
                      np.zeros((grid, grid, NUM_PAFS), np.float32),
                      np.zeros((grid, grid, 1), np.float32))

    def __call__(self, index, draw):
        index, draw = int(index), int(draw)
        rng = np.random.default_rng((self.cfg.seed, self.shard_index, draw))
        keypoints, boxes = self.records.people(index)
        path = self.records.paths[index]
        try:
            sample = make_sample(self.cfg, path, tuple(self.records.sizes[index]), keypoints,
                                 boxes, self.training, rng)
        except SkipSample as skip:
            return self.skip(skip.reason, path, str(skip))
        except Exception as error:  # A bug or an odd file must not end a long run mid-epoch.
            return self.skip("error", path, f"{path}: {type(error).__name__}: {error}")
        with self.lock:
            self.consecutive_skips = 0
        return (sample["image"], sample["heatmaps"], sample["pafs"], sample["mask"],
                np.int32(0))

    def skip(self, reason, path, message):
        self.reporter.report(reason, path, message)
        with self.lock:
            self.consecutive_skips += 1
            consecutive = self.consecutive_skips
        if consecutive >= MAX_CONSECUTIVE_SKIPS:
            raise RuntimeError(f"{consecutive} samples in a row were skipped, the last because "
                               f"{message}; skip counts so far: {dict(self.skip_counts)}")
        return self.empty + (np.int32(SKIP_REASONS.index(reason)),)


# ---------------------------------------------------------------------------------------------
# Figures (python data_generator.py --show N)
# ---------------------------------------------------------------------------------------------
def _grid_extent(sample, stride):
    """imshow extent that puts grid cell (r, c) over its input pixels."""
    rows, cols = sample["heatmaps"].shape[:2]
    return (-0.5, cols * stride - 0.5, rows * stride - 0.5, -0.5)


def _draw_keypoints(axis, keypoints):
    """Scatter the labelled joints and draw the limbs in the project's colours."""
    for person in keypoints:
        labelled = labelled_joints(person)
        for k, (a, b) in enumerate(LIMBS):
            if labelled[a] and labelled[b]:
                axis.plot(person[[a, b], 0], person[[a, b], 1], lw=1.5,
                          color=np.array(config.LIMB_COLORS[k][::-1]) / 255.0)
        axis.scatter(person[labelled, 0], person[labelled, 1], s=10, c="white",
                     edgecolors="black", linewidths=0.5)


def figure_heatmaps(sample, stride, path, dpi=60):
    """The image with its keypoints and loss mask, then each confidence map over the image."""
    import matplotlib.pyplot as plt

    names = list(config.JOINT_NAMES) + ["background"]
    figure, axes = plt.subplots(4, 4, figsize=(12, 12))
    extent = _grid_extent(sample, stride)
    axes[0, 0].imshow(sample["image"])
    ignored = np.ma.masked_equal(1 - sample["mask"][:, :, 0], 0)  # tint ignored cells only
    axes[0, 0].imshow(ignored, cmap="Reds", alpha=0.4, vmin=0, vmax=1, extent=extent)
    _draw_keypoints(axes[0, 0], sample["keypoints"])
    axes[0, 0].set_title("image, keypoints, mask (red = ignored)", fontsize=8)
    for channel, axis in enumerate(axes.flat[1:]):
        axis.imshow(sample["image"].mean(axis=2), cmap="gray", vmin=0, vmax=255)
        values = sample["heatmaps"][:, :, channel]
        if channel < NUM_JOINTS:  # leave the picture visible where the map is ~0
            values = np.ma.masked_less(values, 0.02)
        axis.imshow(values, cmap="jet", alpha=0.6, vmin=0, vmax=1, extent=extent)
        axis.set_title(names[channel], fontsize=8)
    _finish(figure, axes, path, dpi)


def figure_pafs(sample, stride, path, dpi=60):
    """Each limb's PAF x and y component (blue -1 .. red +1) over the image."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(5, 6, figsize=(15, 13))
    extent = _grid_extent(sample, stride)
    grey = sample["image"].mean(axis=2)
    for channel, axis in enumerate(axes.flat):
        a, b = LIMBS[channel // 2]
        axis.imshow(grey, cmap="gray", vmin=0, vmax=255)
        axis.imshow(np.ma.masked_equal(sample["pafs"][:, :, channel], 0), cmap="bwr", alpha=0.8,
                    vmin=-1, vmax=1, extent=extent)
        axis.set_title(f"{config.JOINT_NAMES[a]}->{config.JOINT_NAMES[b]} "
                       f"{'xy'[channel % 2]}", fontsize=7)
    _finish(figure, axes, path, dpi)


def figure_vectors(sample, stride, path, dpi=60):
    """The PAF vectors of every limb drawn as arrows over the image, one colour per limb."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 8))
    axis.imshow(sample["image"], alpha=0.45)  # faded, so that the arrows stand out
    rows, cols = sample["pafs"].shape[:2]
    xs, ys = np.meshgrid(np.arange(cols) * stride + (stride - 1) / 2,
                         np.arange(rows) * stride + (stride - 1) / 2)
    for k in range(NUM_LIMBS):
        u, v = sample["pafs"][:, :, 2 * k], sample["pafs"][:, :, 2 * k + 1]
        on = np.hypot(u, v) > 0.01
        if on.any():
            # Image rows grow downwards, so v is negated for matplotlib's upward y axis.
            axis.quiver(xs[on], ys[on], u[on], -v[on], color=np.array(
                config.LIMB_COLORS[k][::-1]) / 255.0, angles="uv", scale=1.0 / stride,
                scale_units="xy", width=0.003)
    axis.set_title("PAF vectors (one colour per limb)")
    _finish(figure, np.array([axis]), path, dpi)


def _finish(figure, axes, path, dpi):
    for axis in np.asarray(axes).flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    with utils.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(figure)


def show_samples(cfg, count, split, training, out_dir, dpi=60):
    """Write the three figures of `count` samples of `split` into out_dir; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    records = load_records(cfg, split)
    loader_rng = np.random.default_rng(cfg.seed)
    written = []
    indices = loader_rng.permutation(len(records)) if training else np.arange(len(records))
    for number, index in enumerate(indices[:count]):
        keypoints, boxes = records.people(index)
        rng = np.random.default_rng((cfg.seed, 0, number))
        try:
            sample = make_sample(cfg, records.paths[index], tuple(records.sizes[index]),
                                 keypoints, boxes, training, rng)
        except SkipSample as skip:
            LOGGER.warning("sample skipped (%s): %s", skip.reason, skip)
            continue
        stem = os.path.join(out_dir, f"targets_{number}")
        for kind, draw in (("heatmaps", figure_heatmaps), ("pafs", figure_pafs),
                           ("vectors", figure_vectors)):
            draw(sample, cfg.stride, f"{stem}_{kind}.png", dpi)
            written.append(f"{stem}_{kind}.png")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Draw training samples and their targets (confidence maps, PAF x/y, PAF "
                    "arrows) into PNG figures, to check the input pipeline by eye.")
    parser.add_argument("--show", type=int, default=4, metavar="N",
                        help="number of samples to draw (default 4)")
    parser.add_argument("--split", default="train", help="records split to read (default train)")
    parser.add_argument("--validation", action="store_true",
                        help="draw validation samples (letterbox, no augmentation)")
    parser.add_argument("--out_dir", default="images", help="folder of the PNGs (default images)")
    parser.add_argument("--dpi", type=int, default=60, help="resolution of the PNGs (default 60)")
    config.add_config_arguments(parser)
    arguments = parser.parse_args(argv)
    cfg = config.config_from_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    os.makedirs(arguments.out_dir, exist_ok=True)
    written = show_samples(cfg, arguments.show, arguments.split, not arguments.validation,
                           arguments.out_dir, arguments.dpi)
    for path in written:
        print(path)
    print(json.dumps({"figures": len(written), "out_dir": arguments.out_dir}))


if __name__ == "__main__":
    main()
