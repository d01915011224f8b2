"""The per-sample input pipeline as TensorFlow graph ops: read, decode, warp, colour, targets, mask.

dataset.make_dataset uses these when ``cfg.pipeline == "tf"`` (the default): every
sample is made by graph ops inside tf.data's parallel map, with no Python per sample, so the map
runs on as many cores as tf.data gives it, and the dataset can be serialised and run by tf.data
service workers on other machines. The numpy/OpenCV functions of data_generator.py remain the
oracle: the tests check that these give the same targets (within 1e-5) and the same warped
keypoints (within 1e-3 px), given the same random draws.

Conventions (as in data_generator.py)
    Points are (x, y[, v]) in pixels with pixel centres on integers; maps are (rows, cols, C);
    grid cell (r, c) stands for the input pixel (c * stride + (stride - 1) / 2,
    r * stride + (stride - 1) / 2). Geometry and target arithmetic are float64, as numpy's are,
    so that cells on a limb's or a Gaussian's edge are decided the same way; maps are float32,
    images uint8 (see Images). A 3x3 affine matrix maps source pixels (x, y, 1) to input pixels.

Randomness
    Each training sample draws NUM_DRAWS uniforms in [0, 1) with a stateless generator keyed by
    (cfg.seed, shard index, n, record index), n counting the samples drawn by that shard: a
    sample does not depend on which thread made it. The draws are, in order: the anchor person,
    the scale factor, the angle, the crop-centre jitter in x and y, the flip, then brightness,
    contrast and saturation (the tests hand the same values to the numpy functions through a
    stand-in generator). Given the seed, the pipeline is deterministic: the map preserves order
    and the shuffle is seeded. Under tf.data service it is not: which worker makes which split,
    and so the order of the batches, depends on timing (each sample's augmentation still
    depends only on its key).

Where the time goes, and XLA
    Per sample, everything but the pixels (the random transform, the target maps and the loss
    mask: training_plan) is graph ops. Of it, the loop that draws the targets one person at a
    time (drawing all people at once took three times as long) and the mask are one
    XLA-compiled kernel (targets_kernel); XLA needs static shapes, so the sample's
    people are padded with empty ones to one of PEOPLE_COUNTS. The kernel is kept that small on
    purpose: XLA's CPU runtime runs a function of more than 8 steps concurrently on
    TensorFlow's intra-op pool, making the calling thread wait, and the whole plan compiled as
    one function left a tenth of two busy cores idle (see targets_kernel). The pixels: the JPEG
    header gives the size; only the window of the (DCT-reduced) image that the crop reads is
    decoded (decode_and_crop_jpeg); the warp and the colour jitter are one XLA kernel over the
    output (window_kernel), the window flattened and zero-padded to one of WINDOW_PIXELS. Both
    kernels are traced once, with those sizes left open, and XLA compiles each size once per
    process, the first time a sample has it (about a second each). Plain TensorFlow ops would
    run the warp as a dozen full-image passes, whose dispatch and memory traffic cost more
    than the work. XLA also splits each large loop of a kernel into one piece per intra-op
    thread; on a host whose cores all make samples that costs more than it gains, which is why
    train.py runs with a pool of 1 on GPU hosts (dataset.intra_op_threads).

Images
    Formats are recognised by their first bytes as utils.decode_image recognises them; JPEG, PNG,
    BMP and WebP are decoded (TIFF, which OpenCV reads, is not: use the numpy pipeline). JPEGs that
    will be shrunk by 2x or more are decoded at 1/2, 1/4 or 1/8 size by libjpeg's DCT scaling, as
    the numpy path does; other formats are decoded whole. The warp is bilinear with pixel centres on
    integers and a constant border of cfg.pad_value blended into edge pixels, as cv2.warpAffine; the
    colour jitter is the numpy path's, computed in float32 and rounded to uint8 once at the end (the
    numpy path rounds after each step, so the two differ by a grey level or two). Samples carry
    uint8 pixels, as the numpy path's do, and so do the batches (the model casts them; see
    dataset.batched). Validation resizes with area averaging
    (tf.image.resize, like cv2's INTER_AREA) and pads bottom/right.

Bad input
    A missing file (tf.io.matching_files, no exception), an empty file, one that is not a
    JPEG/PNG/BMP/WebP, a JPEG without its end marker or a PNG without its IEND chunk (the rules
    of utils.decode_image, which the numpy pipeline uses), and an image whose size is not the
    record's give a reason code (data_generator.SKIP_REASONS) instead of an error: the sample
    is dropped, counted and logged with its file name (keep_function). A file that passes these
    checks and still fails to decode (a corrupt header) raises inside the map: tf.data's
    ignore_errors drops it (TensorFlow's warning log has the error, not the file name), and the
    gap it leaves in the draw numbers is counted as an "error" (track_skips).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

import config
import utils
from config import FLIP_JOINTS, LIMBS, NUM_JOINTS, NUM_LIMBS

# Imported for constants only; data_generator imports this module lazily.
import data_generator as dg

F64 = tf.float64
# The uniforms each training sample draws (see the module docstring for their order).
NUM_DRAWS = 9
# Image formats are numbered from 1 in the order of utils.IMAGE_SIGNATURES (0: none of them),
# so that a file is recognised by its first bytes as utils.decode_image recognises it.
FORMATS = tuple(name for name, _ in utils.IMAGE_SIGNATURES)
JPEG, PNG = FORMATS.index("JPEG") + 1, FORMATS.index("PNG") + 1
# The formats tf.io.decode_image reads: TIFF files, which OpenCV reads, are skipped here.
DECODABLE = tuple(number for number, name in enumerate(FORMATS, 1)
                  if name in ("JPEG", "PNG", "BMP", "WebP"))
# ITU-R BT.601 luma weights of R, G, B, as OpenCV's BGR2GRAY uses for the saturation jitter.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Characters that tf.io.matching_files reads as a pattern; they are escaped in paths.
GLOB_CHARACTERS = "\\*?["


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def labelled_joints(keypoints):
    """bool (...,): v in {1, 2} and finite x, y. keypoints: float64 (..., 3) of (x, y, v)."""
    flags = keypoints[..., 2]
    return (((flags == config.VISIBLE) | (flags == config.OCCLUDED))
            & tf.math.is_finite(keypoints[..., 0]) & tf.math.is_finite(keypoints[..., 1]))


def labelled_points(keypoints):
    """(labelled bool (P, 14), points float64 (P, 14, 2) (x, y), (0, 0) where unlabelled) of
    keypoints float64 (P, 14, 3)."""
    labelled = labelled_joints(keypoints)
    return labelled, tf.where(labelled[..., None], keypoints[..., :2], tf.constant(0.0, F64))


def gaussian_factors(labelled, points, grid_shape, stride, sigma):
    """(along_x float32 (P, 14, cols), along_y float32 (P, 14, rows)): the separable Gaussian.

    labelled, points: labelled_points of keypoints in input pixels; grid_shape: Python (rows,
    cols). Joint j of person p puts along_y[p, j, r] * along_x[p, j, c] on cell (r, c); the
    exp() is float64, as numpy's, and unlabelled joints have zero factors.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    offset = (stride - 1) / 2.0
    xs = tf.range(cols, dtype=F64) * stride + offset
    ys = tf.range(rows, dtype=F64) * stride + offset
    spread = 2 * sigma * sigma
    along_x = tf.exp(-tf.square(xs - points[..., 0, None]) / spread)
    along_y = tf.exp(-tf.square(ys - points[..., 1, None]) / spread)
    return (tf.cast(along_x * tf.cast(labelled, F64)[..., None], tf.float32),
            tf.cast(along_y, tf.float32))


def limb_instances(labelled, points, stride):
    """Every (person, limb) pair: (starts (P, L, 2), units (P, L, 2), lengths (P, L)), L limbs.

    labelled, points: labelled_points of keypoints in input pixels. Starts are in grid units
    (cell (r, c) at (c, r)). A pair is drawable when both ends are labelled and the limb is
    longer than MIN_LIMB_LENGTH cells; the others get a zero unit vector and length -1, which no
    cell can be on. (Keeping every pair, rather than selecting the drawable ones, keeps the
    shapes static for XLA.)
    """
    limbs = np.asarray(LIMBS)
    grid_points = (points - (stride - 1) / 2.0) / stride
    start = tf.gather(grid_points, limbs[:, 0], axis=1)  # (P, L, 2)
    vectors = tf.gather(grid_points, limbs[:, 1], axis=1) - start
    lengths = _hypot(vectors[..., 0], vectors[..., 1])
    valid = (tf.gather(labelled, limbs[:, 0], axis=1) & tf.gather(labelled, limbs[:, 1], axis=1)
             & (lengths > dg.MIN_LIMB_LENGTH) & tf.math.is_finite(lengths))
    safe_lengths = tf.where(valid, lengths, tf.ones_like(lengths))
    units = tf.where(valid[..., None], vectors / safe_lengths[..., None], tf.zeros_like(vectors))
    return start, units, tf.where(valid, lengths, -tf.ones_like(lengths))


def _hypot(x, y):
    """sqrt(x^2 + y^2) without overflow for huge x, y (as numpy.hypot)."""
    largest = tf.maximum(tf.abs(x), tf.abs(y))
    safe = tf.where(largest > 0, largest, tf.ones_like(largest))
    return largest * tf.sqrt(tf.square(x / safe) + tf.square(y / safe))


def limb_terms(labelled, points, grid_shape, stride):
    """The per-row and per-column parts of the cell test of every (person, limb) pair.

    labelled, points: labelled_points of keypoints (P, 14, 3) in input pixels. A cell (r, c) is
    on limb l of person p when |along_columns[p, l, c] + along_rows[p, l, r]| <= along_limits[p,
    l] and |across_columns[p, l, c] - across_rows[p, l, r]| <= the PAF width (+ BOUNDARY_EPSILON):
    its projection onto the limb falls within the segment (|along - length / 2| <= length / 2,
    one comparison fewer per cell) and its distance from the line is small; the float64
    arithmetic of data_generator._cells_on_limbs, so that cells on an edge are decided alike.
    Returns a dict of those float64 terms ((P, L, cols), (P, L, rows), limits (P, L, 1, 1)) and
    weights float32 (P, 3, L, 1, 1): 1 and the unit vector's x and y, what a cell on the limb
    adds to its count and to its two sums.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    starts, units, lengths = limb_instances(labelled, points, stride)
    dx = tf.range(cols, dtype=F64) - starts[..., 0, None]  # (P, L, cols)
    dy = tf.range(rows, dtype=F64) - starts[..., 1, None]  # (P, L, rows)
    ux, uy = units[..., 0, None], units[..., 1, None]  # (P, L, 1)
    half = lengths[..., None] / 2.0
    return {"along_columns": dx * ux - half, "along_rows": dy * uy,
            "across_columns": dx * uy, "across_rows": dy * ux,
            "along_limits": (half + dg.BOUNDARY_EPSILON)[..., None],
            "weights": tf.cast(tf.stack([tf.ones_like(ux), ux, uy], axis=1), tf.float32)[
                ..., None]}


def person_terms(keypoints, grid_shape, stride, sigma):
    """What draw_people needs of each person: their Gaussians' and limbs' separable factors.

    keypoints: float64 (P, 14, 3) in input pixels (P may be 0). Returns a dict of (P + 1, ...)
    tensors: along_x (P + 1, 14, cols), along_y (P + 1, 14, rows) of gaussian_factors, and
    limb_terms' along_columns, along_rows, across_columns, across_rows, along_limits and
    weights. The last row is a spare unlabelled person, so that
    the loop body's slices are valid when XLA compiles it for a sample with nobody.
    """
    spare = tf.constant([[[0.0, 0.0, config.UNLABELLED]] * NUM_JOINTS], F64)
    labelled, points = labelled_points(tf.concat([keypoints, spare], axis=0))
    along_x, along_y = gaussian_factors(labelled, points, grid_shape, stride, sigma)
    return dict(limb_terms(labelled, points, grid_shape, stride), along_x=along_x,
                along_y=along_y)


def draw_people(count, terms, grid_shape, paf_width):
    """(joints float32 (14, rows, cols), limb_sums float32 (3, L, rows, cols)): the loop.

    count: int32, the people to draw (the first `count` of person_terms' rows); terms:
    person_terms. A loop over the people max-combines each one's Gaussians into the joint maps
    and, for every limb, adds 1 to the cells on it (limb_sums[0], the count) and its unit
    vector's x and y (limb_sums[1], limb_sums[2]). One person at a time and channels first
    (contiguous grid cells), XLA's CPU code runs each step as one vectorised loop; all people at
    once, or channels last, measured up to three times slower (XLA recomputed the cell test for
    each channel and split every flat index into row, column and channel). The loop's state
    is two buffers and its body four steps, so that XLA's CPU runtime runs it on the calling
    thread (see targets_kernel).
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    across_limit = paf_width + dg.BOUNDARY_EPSILON

    def add_person(person, joints, limb_sums):
        joints = tf.maximum(joints, terms["along_y"][person][:, :, None]
                            * terms["along_x"][person][:, None, :])
        along = terms["along_columns"][person][:, None, :] + terms["along_rows"][person][..., None]
        across = (terms["across_columns"][person][:, None, :]
                  - terms["across_rows"][person][..., None])
        on = tf.cast((tf.abs(along) <= terms["along_limits"][person])
                     & (tf.abs(across) <= across_limit), tf.float32)  # (L, rows, cols)
        return person + 1, joints, limb_sums + on[None] * terms["weights"][person]

    # Gaussians are >= 0, so starting the max from zeros gives zero maps for no people.
    start = (tf.constant(0), tf.zeros([NUM_JOINTS, rows, cols]),
             tf.zeros([3, NUM_LIMBS, rows, cols]))
    _, joints, limb_sums = tf.while_loop(lambda person, *maps: person < count, add_person, start)
    return joints, limb_sums


def finished_maps(joints, limb_sums):
    """(heatmaps (rows, cols, 15), pafs (rows, cols, 30)) from draw_people's maps: the
    background channel, the PAFs as sums over counts, channels last."""
    background = 1.0 - tf.reduce_max(joints, axis=0, keepdims=True)
    count, sum_x, sum_y = tf.unstack(limb_sums)
    divisor = tf.maximum(count, 1.0)
    # Channels 2l and 2l + 1 are limb l's x and y.
    fields = tf.reshape(tf.stack([sum_x / divisor, sum_y / divisor], axis=1),
                        [2 * NUM_LIMBS] + joints.shape[1:].as_list())
    return (tf.transpose(tf.concat([joints, background], axis=0), [1, 2, 0]),
            tf.transpose(fields, [1, 2, 0]))


def render_targets(keypoints, grid_shape, stride, sigma, paf_width, count=None):
    """(heatmaps float32 (rows, cols, 15), pafs float32 (rows, cols, 30)) of one sample.

    keypoints: float64 (P, 14, 3) of (x, y, v) in input pixels (P may be 0 or unknown when
    traced); see data_generator.render_targets. count: int32, how many of the rows are people
    (the rest are padding that draws nothing), default all. Graph ops: person_terms,
    draw_people (the loop), finished_maps.
    """
    terms = person_terms(keypoints, grid_shape, stride, sigma)
    count = tf.shape(keypoints)[0] if count is None else count
    return finished_maps(*draw_people(count, terms, grid_shape, paf_width))


# ---------------------------------------------------------------------------------------------
# Geometry: float64 3x3 affine matrices mapping source pixels (x, y, 1) to input pixels
# ---------------------------------------------------------------------------------------------
def person_frames(keypoints, boxes, width, height):
    """(centres (P, 2) (x, y), heights (P,), anchorable (P,) bool): data_generator.person_frames.

    keypoints: float64 (P, 14, 3); boxes: float64 (P, 4) (x1, y1, x2, y2, NaN when absent);
    width, height: float64 scalars, the source image's size.
    """
    labelled = labelled_joints(keypoints)
    limits = tf.stack([width - 1.0, height - 1.0])
    upper = tf.maximum(limits, 0.0)
    points = tf.clip_by_value(_nan_to_zero(keypoints[..., :2]), 0.0, upper)
    inf = tf.constant(np.inf, F64)
    low = tf.reduce_min(tf.where(labelled[..., None], points, inf), axis=1)
    high = tf.reduce_max(tf.where(labelled[..., None], points, -inf), axis=1)
    clipped = tf.clip_by_value(tf.where(tf.math.is_nan(boxes), tf.constant(-1.0, F64), boxes),
                               0.0, tf.tile(upper, [2]))
    box_ok = (tf.reduce_all(tf.math.is_finite(boxes), axis=1)
              & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))
    low = tf.where(box_ok[:, None], clipped[:, :2], low)
    high = tf.where(box_ok[:, None], clipped[:, 2:], high)
    anchorable = tf.reduce_any(labelled, axis=1)
    found = anchorable | box_ok
    centres = tf.where(found[:, None], (low + high) / 2.0, limits / 2.0)
    heights = tf.where(found, high[:, 1] - low[:, 1], tf.constant(0.0, F64))
    floor = tf.maximum(tf.constant(dg.MIN_PERSON_HEIGHT, F64), 0.05 * tf.maximum(width, height))
    return centres, tf.maximum(heights, floor), anchorable


def _nan_to_zero(values):
    return tf.where(tf.math.is_nan(values), tf.zeros_like(values), values)


def affine(scale, angle_degrees, flip, centre, target):
    """float64 (3, 3): move `centre` to the origin, mirror x if flip, scale, rotate, move to target.

    scale, angle_degrees: float64 scalars; flip: bool scalar; centre, target: float64 (2,) (x, y).
    """
    radians = angle_degrees * (math.pi / 180.0)
    cos, sin = tf.cos(radians) * scale, tf.sin(radians) * scale
    mirror = tf.where(flip, tf.constant(-1.0, F64), tf.constant(1.0, F64))
    linear = tf.reshape(tf.stack([cos * mirror, -sin, sin * mirror, cos]), [2, 2])
    translation = target - tf.linalg.matvec(linear, centre)
    return tf.concat([tf.concat([linear, translation[:, None]], axis=1),
                      tf.constant([[0.0, 0.0, 1.0]], F64)], axis=0)


def training_transform(cfg, keypoints, boxes, width, height, draws):
    """(matrix float64 (3, 3) source -> input pixels, flipped bool) of one training sample.

    draws: float64 (NUM_DRAWS,) uniforms in [0, 1) (the first six are used here). Same rules as
    data_generator.training_transform: the crop centres on a random anchorable person, else on
    the image centre with the image's longer side fitted to the crop.
    """
    size = float(cfg.input_size)
    centres, heights, anchorable = person_frames(keypoints, boxes, width, height)
    count = tf.reduce_sum(tf.cast(anchorable, tf.int32))
    pick = tf.minimum(tf.cast(tf.floor(draws[0] * tf.cast(count, F64)), tf.int32), count - 1)
    # The pick-th anchorable person, found by rank rather than by a list of candidates, so that
    # every shape stays static.
    chosen = anchorable & (tf.cumsum(tf.cast(anchorable, tf.int32)) - 1 == pick)
    person_centre = tf.reduce_sum(tf.where(chosen[:, None], centres, 0.0), axis=0)
    person_height = tf.reduce_sum(tf.where(chosen, heights, 0.0))
    has_person = count > 0
    centre = tf.where(has_person, person_centre, tf.stack([width - 1.0, height - 1.0]) / 2.0)
    base = tf.where(has_person, cfg.target_person_height * size / tf.maximum(person_height, 1.0),
                    size / tf.maximum(tf.maximum(width, height), 1.0))
    factor = cfg.scale_min + draws[1] * (cfg.scale_max - cfg.scale_min)
    scale = tf.clip_by_value(base * factor, *dg.SCALE_LIMITS)
    angle = -cfg.max_rotation + draws[2] * (2.0 * cfg.max_rotation)
    jitter = -cfg.center_jitter + draws[3:5] * (2.0 * cfg.center_jitter)
    flipped = draws[5] < cfg.flip_probability
    return affine(scale, angle, flipped, centre, (size - 1.0) / 2.0 + jitter), flipped


def letterbox_transform(cfg, width, height):
    """(matrix float64 (3, 3), new size int32 (2,) (w, h)): data_generator.letterbox_transform.

    width, height: float64 scalars. Fits the image into input_size with its origin at the top
    left, with cv2.resize's pixel-centre convention x' = (x + 0.5) * new_w / w - 0.5.
    """
    size = float(cfg.input_size)
    factor = size / tf.maximum(tf.maximum(width, height), 1.0)
    new_size = tf.clip_by_value(tf.round(tf.stack([width, height]) * factor), 1.0, size)
    sx, sy = tf.unstack(new_size / tf.maximum(tf.stack([width, height]), 1.0))
    zero = tf.constant(0.0, F64)
    matrix = tf.reshape(tf.stack([sx, zero, 0.5 * sx - 0.5, zero, sy, 0.5 * sy - 0.5,
                                  zero, zero, tf.constant(1.0, F64)]), [3, 3])
    return matrix, tf.cast(new_size, tf.int32)


def transform_keypoints(keypoints, matrix, flipped):
    """float64 (P, 14, 3): data_generator.transform_keypoints as graph ops.

    Labelled joints go through `matrix` and keep their v wherever they land; unlabelled ones and
    those landing on a non-finite position become (0, 0, 3); left and right swap if flipped.
    """
    points = tf.linalg.matvec(matrix[None, None, :2, :2], keypoints[..., :2]) + matrix[:2, 2]
    keep = labelled_joints(keypoints) & tf.reduce_all(tf.math.is_finite(points), axis=-1)
    zero = tf.constant(0.0, F64)
    result = tf.concat([tf.where(keep[..., None], points, zero),
                        tf.where(keep, keypoints[..., 2], float(config.UNLABELLED))[..., None]],
                       axis=-1)
    # In the mirrored picture the joint called j is the one that was FLIP_JOINTS[j].
    return tf.where(flipped, tf.gather(result, list(FLIP_JOINTS), axis=1), result)


def inverse_affine(matrix):
    """float64 (3, 3) inverse of an affine matrix, by the same closed form as data_generator."""
    a, b, tx = matrix[0, 0], matrix[0, 1], matrix[0, 2]
    c, d, ty = matrix[1, 0], matrix[1, 1], matrix[1, 2]
    determinant = a * d - b * c
    ia, ib, ic, id_ = d / determinant, -b / determinant, -c / determinant, a / determinant
    zero, one = tf.constant(0.0, F64), tf.constant(1.0, F64)
    return tf.reshape(tf.stack([ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty),
                                zero, zero, one]), [3, 3])


def loss_mask(inverse, width, height, grid_shape, stride, masked_boxes, ignore_padding):
    """float32 (rows, cols, 1): data_generator.loss_mask as graph ops.

    inverse: float64 (3, 3) input -> source pixels (inverse_affine of data_generator's matrix);
    width, height: float64 scalars;
    masked_boxes: float64 (K, 4) source-pixel boxes (x1, y1, x2, y2). Each cell's pixel is mapped
    back to the source: 0 where it falls inside a masked box, or outside the image when
    ignore_padding (a Python bool); else 1.
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    offset = (stride - 1) / 2.0
    grid_x = tf.range(cols, dtype=F64)[None, :] * stride + offset
    grid_y = tf.range(rows, dtype=F64)[:, None] * stride + offset
    source_x = inverse[0, 0] * grid_x + inverse[0, 1] * grid_y + inverse[0, 2]  # (rows, cols)
    source_y = inverse[1, 0] * grid_x + inverse[1, 1] * grid_y + inverse[1, 2]
    keep = tf.ones([rows, cols], tf.bool)
    if ignore_padding:
        keep = ((source_x >= -0.5) & (source_x <= width - 0.5)
                & (source_y >= -0.5) & (source_y <= height - 0.5))
    x1, y1, x2, y2 = (masked_boxes[:, k] for k in range(4))
    in_box = ((source_x[..., None] >= x1) & (source_x[..., None] <= x2)
              & (source_y[..., None] >= y1) & (source_y[..., None] <= y2))
    keep &= ~tf.reduce_any(in_box, axis=2)
    return tf.cast(keep, tf.float32)[:, :, None]


def unannotated_boxes(keypoints, boxes, width, height):
    """float64 (P, 4): data_generator.unannotated_boxes, one row per person.

    The masked people's boxes (finite box, no labelled joint), clipped to the image a pixel
    beyond it; the other rows are empty boxes (inf, inf, -inf, -inf) that contain no cell.
    """
    chosen = (tf.reduce_all(tf.math.is_finite(boxes), axis=1)
              & ~tf.reduce_any(labelled_joints(keypoints), axis=1))
    upper = tf.stack([width, height, width, height])
    empty = tf.constant([np.inf, np.inf, -np.inf, -np.inf], F64)
    return tf.where(chosen[:, None], tf.clip_by_value(boxes, -1.0, upper), empty)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def glob_escaped(path):
    """`path` as a tf.io.matching_files pattern that matches only that file."""
    return "".join("\\" + char if char in GLOB_CHARACTERS else char for char in path)


def read_file(path, pattern):
    """(contents string scalar, reason int32): the file's bytes, or b"" and missing_image.

    pattern: glob_escaped(path). Looking the file up first means a missing file gives a reason
    code instead of an error that would end the map.
    """
    exists = tf.size(tf.io.matching_files(pattern)) > 0
    contents = tf.cond(exists, lambda: tf.io.read_file(path), lambda: tf.constant(b""))
    return contents, tf.where(exists, 0, dg.SKIP_REASONS.index("missing_image"))


def image_format(contents):
    """int32 scalar: the number of the format (see FORMATS) the first bytes announce, or 0."""
    kinds = [tf.strings.substr(contents, 0, len(signature)) == signature
             for _, signature in utils.IMAGE_SIGNATURES]
    return tf.reduce_max(tf.where(tf.stack(kinds), tf.range(1, len(kinds) + 1), 0))


def looks_complete(contents, kind):
    """bool scalar: a JPEG ends with its EOI marker, a PNG has IEND in its last bytes.

    The rule of utils.check_image_ends, by content: a file cut short in a copy misses them, and
    libjpeg would decode the missing part as grey without an error.
    """
    length = tf.strings.length(contents)
    jpeg_end = tf.strings.substr(contents, tf.maximum(length - 2, 0), 2) == b"\xff\xd9"
    probe = utils.PROBE_BYTES
    tail = tf.io.decode_raw(tf.strings.substr(contents, tf.maximum(length - probe, 0), probe),
                            tf.uint8)
    windows = tf.stack([tail[:-3], tail[1:-2], tail[2:-1], tail[3:]], axis=1)  # (n, 4)
    png_end = tf.reduce_any(tf.reduce_all(windows == tf.constant(list(b"IEND"), tf.uint8), 1))
    return tf.where(kind == JPEG, jpeg_end, tf.where(kind == PNG, png_end, True))


def readable_reason(contents, reason):
    """(format int32, reason int32): unreadable_image for empty, unknown, undecodable (TIFF)
    or truncated files."""
    kind = image_format(contents)
    readable = tf.reduce_any(kind == tf.constant(DECODABLE)) & looks_complete(contents, kind)
    return kind, tf.where((reason == 0) & ~readable, dg.SKIP_REASONS.index("unreadable_image"),
                          reason)


def decode(contents, kind, factor_index):
    """uint8 (h, w, 3) RGB; JPEGs (kind JPEG) at 1 / 2**factor_index size by DCT scaling.

    Grey and 4-channel files come back as 3-channel RGB; EXIF orientation is ignored, as in
    data_generator.decode_image.
    """
    def jpeg(ratio):
        return lambda: tf.io.decode_jpeg(contents, channels=3, ratio=ratio,
                                         dct_method="INTEGER_ACCURATE")

    def other():
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    image = tf.cond(kind == JPEG,
                    lambda: tf.switch_case(factor_index, [jpeg(r) for r in (1, 2, 4, 8)]), other)
    return tf.ensure_shape(image, [None, None, 3])


def file_shape(contents, kind, reason):
    """(shape int32 (h, w), whole uint8 (h, w, 3)) of a sample's file.

    A JPEG's size comes from its header (its pixels are decoded later, only the window a crop
    needs); another format is decoded whole here. A skipped file gives zeros.
    """
    def jpeg():
        return tf.io.extract_jpeg_shape(contents)[:2], tf.zeros([0, 0, 3], tf.uint8)

    def other():
        whole = decode(contents, kind, tf.constant(0))
        return tf.shape(whole)[:2], whole

    def skipped():
        return tf.zeros([2], tf.int32), tf.zeros([0, 0, 3], tf.uint8)

    return tf.cond(reason != 0, skipped, lambda: tf.cond(kind == JPEG, jpeg, other))


def source_size(record_size, shape):
    """float64 (width, height): the record's, or the file's (shape (h, w)) when it says <= 0."""
    known = tf.reduce_all(record_size > 0)
    size = tf.where(known, tf.cast(record_size, F64), tf.cast(tf.reverse(shape, [0]), F64))
    return size[0], size[1]


def reduction_index(scale, is_jpeg):
    """int32 k: decode a JPEG at 1/2**k size (k <= 3) when the warp shrinks it by 2**(k+1).

    Same rule as data_generator.reduction_factor; 0 for other formats.
    """
    steps = tf.add_n([tf.cast(scale * factor * 2.0 <= 1.0, tf.int32) for factor in (1, 2, 4)])
    return tf.where(is_jpeg, steps, 0)


def reduced_shape(shape, factor_index):
    """int32 (h, w) of an image of `shape` decoded at 1/2**factor_index (libjpeg rounds up)."""
    factor = tf.bitwise.left_shift(1, factor_index)
    return (shape + factor - 1) // factor


def reduced_to_source(decoded_shape, width, height):
    """float64 (3, 3) from the pixels of a (possibly reduced) decoded image to the record's.

    decoded_shape: int32 (h, w, ...). A reduced pixel i covers source pixels [i*f, (i+1)*f), so
    its centre is f*i + (f-1)/2.
    """
    fx = width / tf.cast(decoded_shape[1], F64)
    fy = height / tf.cast(decoded_shape[0], F64)
    zero, one = tf.constant(0.0, F64), tf.constant(1.0, F64)
    return tf.reshape(tf.stack([fx, zero, (fx - 1.0) / 2.0, zero, fy, (fy - 1.0) / 2.0,
                                zero, zero, one]), [3, 3])


def size_matches(decoded_shape, width, height, factor_index):
    """bool: the decoded size is the record's divided by the reduction, within a pixel."""
    factor = tf.cast(tf.bitwise.left_shift(1, factor_index), F64)
    return ((tf.abs(tf.cast(decoded_shape[1], F64) - width / factor) <= 1.0)
            & (tf.abs(tf.cast(decoded_shape[0], F64) - height / factor) <= 1.0))


def warp_image(image, inverse, size, pad_value):
    """float32 (size, size, 3): image (h, w, 3) warped, bilinear, pad_value border.

    inverse: float (2, 3) mapping output pixels to image pixels (x, y). This is
    ImageProjectiveTransformV3, which samples with pixel centres on integers and blends the
    border value into edge pixels, as cv2.warpAffine does.
    """
    transform = tf.concat([tf.reshape(tf.cast(inverse, tf.float32), [6]), tf.zeros([2])], 0)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform[None],
        output_shape=[size, size], fill_value=float(pad_value), interpolation="BILINEAR",
        fill_mode="CONSTANT")
    return tf.reshape(warped, [size, size, 3])


def jitter_colors(image, draws, strength):
    """float32 (S, S, 3) RGB: data_generator.jitter_colors without its uint8 rounding.

    draws: float64 (3,) uniforms in [0, 1) for the brightness, contrast and saturation factors
    in 1 +- strength (a Python float). Brightness, then contrast about the brightened mean,
    clipped to 0..255; then saturation, a blend with the luma grey image, clipped again.
    """
    if strength <= 0:
        return image
    brightness, contrast, saturation = tf.unstack(
        tf.cast(1.0 - strength + 2.0 * strength * draws, tf.float32))
    mean = tf.reduce_mean(image)
    image = tf.clip_by_value(contrast * brightness * image + (1.0 - contrast) * brightness * mean,
                             0.0, 255.0)
    grey = tf.reduce_sum(image * tf.constant(LUMA_WEIGHTS, tf.float32), axis=2, keepdims=True)
    return tf.clip_by_value(saturation * image + (1.0 - saturation) * grey, 0.0, 255.0)


def letterbox_image(image, new_size, size, pad_value):
    """uint8 (size, size, 3): area-resize to new_size (w, h) int32, pad bottom/right."""
    resized = tf.image.resize(image, [new_size[1], new_size[0]], method="area")
    padding = [[0, size - new_size[1]], [0, size - new_size[0]], [0, 0]]
    padded = tf.pad(resized, padding, constant_values=float(pad_value))
    return to_pixels(tf.reshape(padded, [size, size, 3]))


def to_pixels(image):
    """uint8 of a float32 image: rounded and saturated, as OpenCV stores its results."""
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


# ---------------------------------------------------------------------------------------------
# The training image: decode the source window the crop needs, warp and jitter it in XLA
# ---------------------------------------------------------------------------------------------
# Pixel counts that the warp kernel is compiled for: the source region a crop reads is
# flattened and zero-padded (a memcpy) to the smallest count that holds it, so XLA compiles one
# kernel per count rather than one per image size. With the JPEG reduction, a crop reads at
# most about input_size * sqrt(2) * 2 pixels across (1,041 for 368); larger regions (other
# formats shrunk more than 2x) take ImageProjectiveTransformV3 instead.
WINDOW_PIXELS = tuple(2 ** power for power in range(12, 21)) + (1088 * 1088,)
# Extra decoded pixels kept around the region a crop reads, so that libjpeg's chroma
# upsampling at the edges of a cropped decode stays out of the pixels that are sampled.
WINDOW_MARGIN = 8


def source_window(inverse, shape, size):
    """int32 (x, y, width, height): the decoded pixels the warp reads, within the image.

    inverse: float64 (3, 3) output -> decoded pixels; shape: int32 (h, w) of the decoded image.
    Bilinear sampling of output pixels 0..size-1 reads the pixels from floor(min) to
    floor(max) + 1 of the mapped corners, plus WINDOW_MARGIN; the window is clipped to the image
    and is at least one pixel (a crop wholly off the picture reads none of it).
    """
    corners = tf.constant([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], F64)
    mapped = tf.linalg.matvec(inverse[None, :2, :2], corners) + inverse[:2, 2]  # (4, 2)
    limits = tf.cast(tf.reverse(shape, [0]) - 1, F64)
    low = tf.clip_by_value(tf.floor(tf.reduce_min(mapped, 0)) - WINDOW_MARGIN, 0.0, limits)
    high = tf.clip_by_value(tf.floor(tf.reduce_max(mapped, 0)) + 1 + WINDOW_MARGIN, low, limits)
    low, high = tf.cast(low, tf.int32), tf.cast(high, tf.int32)
    return tf.concat([low, high - low + 1], axis=0)


def decode_window(contents, kind, factor_index, whole, window):
    """uint8 (height, width, 3) RGB: the window (x, y, width, height) of the decoded image.

    A JPEG (kind JPEG) decodes only the window (libjpeg skips the rest), at 1/2**factor_index size;
    other formats are cut from `whole`, their image decoded in full.
    """
    x, y, width, height = tf.unstack(window)

    def jpeg(ratio):
        return lambda: tf.io.decode_and_crop_jpeg(contents, [y, x, height, width], channels=3,
                                                  ratio=ratio, dct_method="INTEGER_ACCURATE")

    pixels = tf.cond(kind == JPEG,
                     lambda: tf.switch_case(factor_index, [jpeg(r) for r in (1, 2, 4, 8)]),
                     lambda: whole[y:y + height, x:x + width])
    return tf.ensure_shape(pixels, [None, None, 3])


def training_plan(cfg, keypoints, boxes, width, height, shape, is_jpeg, draws, count=None,
                  drawer=None):
    """Everything of a training sample but its pixels, as graph ops.

    keypoints float64 (P, 14, 3), boxes float64 (P, 4); width, height: float64 source size;
    shape: int32 (h, w) of the file (a JPEG's full size); is_jpeg: bool; draws: (NUM_DRAWS,);
    count, drawer: see sample_targets. Returns (heatmaps, pafs, mask, factor_index int32,
    window int32 (4,) (x, y, w, h) of the decoded pixels to read, inverse float32 (2, 3)
    output -> window pixels, size_ok bool).
    """
    matrix, flipped = training_transform(cfg, keypoints, boxes, width, height, draws)
    scale = tf.sqrt(tf.abs(matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0]))
    factor_index = reduction_index(scale, is_jpeg)
    decoded = reduced_shape(shape, factor_index)
    to_output = tf.matmul(matrix, reduced_to_source(decoded, width, height))
    inverse = inverse_affine(to_output)  # output -> decoded pixels
    window = source_window(inverse, decoded, cfg.input_size)
    to_window = inverse[:2] - tf.cast(tf.stack([[0, 0, window[0]], [0, 0, window[1]]]), F64)
    targets = sample_targets(cfg, matrix, flipped, keypoints, boxes, width, height, count,
                             drawer)
    return (*targets, factor_index, window, tf.cast(to_window, tf.float32),
            size_matches(decoded, width, height, factor_index))


# People counts that the targets kernel is compiled for: a sample's people are padded with
# unlabelled, box-less people (they draw nothing and mask nothing) to the smallest count here that
# holds them, or beyond the last to a multiple of it.
PEOPLE_COUNTS = (1, 2, 4, 8, 16, 32, 64)


def planned(cfg, keypoints, boxes, width, height, shape, is_jpeg, draws, kernel=None):
    """training_plan with its targets loop XLA-compiled (kernel: targets_kernel(cfg), made here
    when not given).

    The people are padded to a PEOPLE_COUNTS size, the kernel's inputs then having one of a few
    shapes: XLA compiles the kernel for each the first time a sample has it. The loop still
    stops at the sample's own people.
    """
    count = tf.shape(keypoints)[0]
    missing = padded_count(count) - count
    nobody = tf.tile(tf.constant([[[0.0, 0.0, config.UNLABELLED]]], F64), [missing, NUM_JOINTS, 1])
    no_boxes = tf.fill([missing, 4], tf.constant(np.nan, F64))
    return training_plan(cfg, tf.concat([keypoints, nobody], 0), tf.concat([boxes, no_boxes], 0),
                         width, height, shape, is_jpeg, draws, count,
                         kernel or targets_kernel(cfg))


def targets_kernel(cfg):
    """sample_maps XLA-compiled for cfg: (count int32, person_terms dict, inverse float64 (3, 3),
    width, height float64, hidden people's boxes float64 (P, 4)) -> (joints, limb_sums, mask).

    Traced once with the number of people left open. Why only the loop and the mask: XLA's CPU
    runtime runs a compiled function's steps (its fused loops, "thunks") concurrently on
    TensorFlow's intra-op pool, and makes the calling thread wait for them, unless the
    function has at most 8 steps or steps on tiny buffers only. The whole plan compiled as one
    function had about 75 steps, mostly tiny scalar ones: with every core busy making other
    samples, handing them over and waiting cost more than they took, and tf.data's two
    threads kept only 1.8 of the two cores busy (1.97 with the plan as plain graph ops, in an
    ad hoc test). This kernel has 6 steps at the top and 4 in the loop's body, so it runs on
    the calling thread; the geometry, the per-person terms and the inverse matrix around it
    are plain graph ops, which cost more than their compiled form (the plan of a synthetic
    sample: 0.58 against 0.39 CPU ms, in an ad hoc measurement on one thread).
    """
    grid = (cfg.input_size // cfg.stride,) * 2
    example = person_terms(tf.zeros([0, NUM_JOINTS, 3], F64), grid, cfg.stride, cfg.heatmap_sigma)
    scalar = tf.TensorSpec([], F64)
    signature = [tf.TensorSpec([], tf.int32), tf.nest.map_structure(
        lambda term: tf.TensorSpec([None] + term.shape[1:].as_list(), term.dtype), example),
        tf.TensorSpec([3, 3], F64), scalar, scalar, tf.TensorSpec([None, 4], F64)]
    return tf.function(lambda *inputs: sample_maps(cfg, *inputs), jit_compile=True,
                       autograph=False, input_signature=signature)


class Kernels(NamedTuple):
    """The XLA kernels of one training dataset (make_kernels): built once per dataset, so that
    its samples share them and XLA compiles each for a shape only once."""

    targets: object  # targets_kernel(cfg)
    window: object  # window_kernel(cfg.input_size, cfg.pad_value, cfg.color_jitter)


def make_kernels(cfg):
    """Kernels for cfg's training samples."""
    return Kernels(targets_kernel(cfg), window_kernel(cfg.input_size, cfg.pad_value,
                                                      cfg.color_jitter))


def padded_count(count):
    """int32: the smallest PEOPLE_COUNTS entry >= count, or count rounded up to a multiple of
    the last one."""
    largest = PEOPLE_COUNTS[-1]
    bucket = tf.reduce_sum(tf.cast(tf.constant(PEOPLE_COUNTS) < count, tf.int32))
    return tf.where(count <= largest, tf.gather(PEOPLE_COUNTS + (largest,), bucket),
                    (count + largest - 1) // largest * largest)


def window_kernel(size, pad_value, strength):
    """XLA-compiled (pixels uint8 (N,), extent int32 (2,) (w, h), inverse float32 (2, 3),
    draws float64 (3,)) -> uint8 (size, size, 3): bilinear warp and colour jitter in one pass.

    pixels: a (h, w, 3) window flattened row by row and zero-padded to N bytes; inverse maps
    output pixels to window pixels. Taps outside the extent read pad_value, as cv2's constant
    border does. XLA fuses the coordinate arithmetic, the four taps, the blend and the jitter
    into one loop over the output, which TensorFlow's own ops would run as a dozen full-image
    passes.
    """
    signature = [tf.TensorSpec([None], tf.uint8), tf.TensorSpec([2], tf.int32),
                 tf.TensorSpec([2, 3], tf.float32), tf.TensorSpec([3], F64)]

    @tf.function(jit_compile=True, autograph=False, input_signature=signature)
    def kernel(pixels, extent, inverse, draws):
        channels = tf.range(3)
        grid = tf.range(size, dtype=tf.float32)
        source_x = inverse[0, 0] * grid[None, :] + inverse[0, 1] * grid[:, None] + inverse[0, 2]
        source_y = inverse[1, 0] * grid[None, :] + inverse[1, 1] * grid[:, None] + inverse[1, 2]
        left, top = tf.floor(source_x), tf.floor(source_y)
        fx, fy = (source_x - left)[..., None], (source_y - top)[..., None]
        left, top = tf.cast(left, tf.int32), tf.cast(top, tf.int32)

        def tap(row, col):
            inside = (col >= 0) & (col < extent[0]) & (row >= 0) & (row < extent[1])
            # One byte per gathered element: XLA's CPU code runs gathers of single
            # elements about three times faster than gathers of 3-byte rows.
            start = tf.where(inside, row * extent[0] + col, 0) * 3
            value = tf.cast(tf.gather(pixels, start[..., None] + channels), tf.float32)
            return tf.where(inside[..., None], value, float(pad_value))

        upper_left, upper_right = tap(top, left), tap(top, left + 1)
        lower_left, lower_right = tap(top + 1, left), tap(top + 1, left + 1)
        upper = upper_left + (upper_right - upper_left) * fx
        lower = lower_left + (lower_right - lower_left) * fx
        return to_pixels(jitter_colors(upper + (lower - upper) * fy, draws, strength))

    return kernel


def warp_window(cfg, pixels, inverse, draws, kernel=None):
    """uint8 (S, S, 3): the window `pixels` (uint8 (h, w, 3)) warped by `inverse` (float32
    (2, 3), output -> window pixels) and colour-jittered with draws (3,), by window_kernel on the
    smallest WINDOW_PIXELS that holds it, or by ImageProjectiveTransformV3 when none does."""
    kernel = kernel or window_kernel(cfg.input_size, cfg.pad_value, cfg.color_jitter)
    shape = tf.shape(pixels)[:2]
    count = shape[0] * shape[1]

    def padded():
        bucket = tf.reduce_sum(tf.cast(tf.constant(WINDOW_PIXELS) < count, tf.int32))
        # Concatenation is a memcpy; tf.pad on uint8 images is many times slower.
        filler = tf.zeros([3 * (tf.gather(WINDOW_PIXELS, bucket) - count)], tf.uint8)
        flat = tf.concat([tf.reshape(pixels, [-1]), filler], 0)
        return kernel(flat, tf.stack([shape[1], shape[0]]), inverse, draws)

    def fallback():
        image = warp_image(pixels, inverse, cfg.input_size, cfg.pad_value)
        return to_pixels(jitter_colors(image, draws, cfg.color_jitter))

    return tf.cond(count <= WINDOW_PIXELS[-1], padded, fallback)


# ---------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------
class RecordTensors:
    """data_generator.Records as constant tensors, captured by the map function.

    paths, patterns (glob_escaped paths): string (N,); sizes: int64 (N, 2) (width, height);
    offsets: int64 (N + 1,); keypoints: float32 (M, 14, 3); boxes: float32 (M, 4). People stay
    ragged: record i's are rows offsets[i]:offsets[i+1], sliced per sample (and padded only
    inside the sample, see PEOPLE_COUNTS). Being constants, they travel inside the serialised
    dataset to tf.data service workers (about 100 MB for the 210,000 training records of AI
    Challenger).
    """

    def __init__(self, records):
        self.paths = tf.constant(records.paths, tf.string)
        self.patterns = tf.constant([glob_escaped(path) for path in records.paths], tf.string)
        self.sizes = tf.constant(records.sizes, tf.int64)
        self.offsets = tf.constant(records.offsets, tf.int64)
        self.keypoints = tf.constant(records.keypoints, tf.float32)
        self.boxes = tf.constant(records.boxes, tf.float32)

    def record(self, index):
        """(path, pattern, size int64 (2,), keypoints float64 (P, 14, 3), boxes float64 (P, 4))."""
        begin, end = self.offsets[index], self.offsets[index + 1]
        return (self.paths[index], self.patterns[index], self.sizes[index],
                tf.cast(self.keypoints[begin:end], F64), tf.cast(self.boxes[begin:end], F64))


def sample_draws(seed, shard_index, draw, index):
    """float64 (NUM_DRAWS,) uniforms in [0, 1) of sample `draw` (int64) of a shard, which shows
    record `index` (int64).

    Stateless: the same arguments always give the same numbers, whichever thread or tf.data
    service worker computes them. The record index is folded in too, so that two service
    workers that count their samples separately still draw differently for different images.
    """
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, shard_index], tf.int64), tf.cast(draw, tf.int64))
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))
    return tf.random.stateless_uniform([NUM_DRAWS], seed=key, dtype=F64)


def sample_targets(cfg, matrix, flipped, keypoints, boxes, width, height, count=None,
                   drawer=None):
    """(heatmaps, pafs, mask) float32 grid maps of one sample given its transform.

    count: int32, how many rows of keypoints are people (default all; the rest are padding);
    drawer: sample_maps as targets_kernel compiled it, or None for plain graph ops.
    """
    grid = (cfg.input_size // cfg.stride,) * 2
    moved = transform_keypoints(keypoints, matrix, flipped)
    terms = person_terms(moved, grid, cfg.stride, cfg.heatmap_sigma)
    count = tf.shape(keypoints)[0] if count is None else count
    hidden_people = unannotated_boxes(keypoints, boxes, width, height)
    if drawer is None:
        drawer = lambda *inputs: sample_maps(cfg, *inputs)  # noqa: E731
    # The inverse here, not in the kernel: its scalar steps would make the kernel's steps too
    # many to run in order (see targets_kernel).
    joints, limb_sums, mask = drawer(count, terms, inverse_affine(matrix), width, height,
                                     hidden_people)
    return (*finished_maps(joints, limb_sums), mask)


def sample_maps(cfg, count, terms, inverse, width, height, hidden_people):
    """(joints, limb_sums, mask): draw_people and loss_mask, the part of sample_targets that
    targets_kernel compiles (arguments as sample_targets has them; inverse: float64 (3, 3),
    input -> source pixels)."""
    grid = (cfg.input_size // cfg.stride,) * 2
    joints, limb_sums = draw_people(count, terms, grid, cfg.paf_width)
    return joints, limb_sums, loss_mask(inverse, width, height, grid, cfg.stride, hidden_people,
                                        cfg.ignore_padding)


def open_image(record_size, path, pattern):
    """(contents, format, reason, shape (h, w), whole, width, height) of a sample's file."""
    contents, reason = read_file(path, pattern)
    kind, reason = readable_reason(contents, reason)
    shape, whole = file_shape(contents, kind, reason)
    width, height = source_size(record_size, shape)
    return contents, kind, reason, shape, whole, width, height


def training_sample(cfg, record, draws, kernels=None):
    """(image uint8 (S, S, 3) RGB, heatmaps, pafs, mask, reason int32): one sample.

    record: RecordTensors.record's tuple; draws: sample_draws; kernels: the dataset's
    make_kernels(cfg) (made here when not given). The one affine warp of
    training_transform, colour jitter, and the targets of the transformed keypoints; a skipped
    sample (reason > 0) gets a blank image without decoding anything.
    """
    path, pattern, record_size, keypoints, boxes = record
    contents, kind, reason, shape, whole, width, height = open_image(record_size, path, pattern)
    kernels = kernels or make_kernels(cfg)
    *targets, factor_index, window, inverse, size_ok = planned(
        cfg, keypoints, boxes, width, height, shape, kind == JPEG, draws, kernels.targets)
    reason = tf.where((reason == 0) & ~size_ok, dg.SKIP_REASONS.index("size_mismatch"), reason)

    def picture():
        pixels = decode_window(contents, kind, factor_index, whole, window)
        return warp_window(cfg, pixels, inverse, draws[6:], kernels.window)

    blank = tf.zeros([cfg.input_size, cfg.input_size, 3], tf.uint8)
    image = tf.cond(reason == 0, picture, lambda: blank)
    return (image, *targets, reason)


def validation_sample(cfg, record):
    """(image, heatmaps, pafs, mask, reason): the whole image letterboxed, no randomness."""
    path, pattern, record_size, keypoints, boxes = record
    contents, kind, reason, shape, whole, width, height = open_image(record_size, path, pattern)
    matrix, new_size = letterbox_transform(cfg, width, height)
    factor_index = reduction_index(tf.maximum(matrix[0, 0], matrix[1, 1]), kind == JPEG)
    decoded = reduced_shape(shape, factor_index)
    reason = tf.where((reason == 0) & ~size_matches(decoded, width, height, factor_index),
                      dg.SKIP_REASONS.index("size_mismatch"), reason)

    def picture():
        pixels = tf.cond(kind == JPEG, lambda: decode(contents, kind, factor_index), lambda: whole)
        return letterbox_image(pixels, new_size, cfg.input_size, cfg.pad_value)

    blank = tf.zeros([cfg.input_size, cfg.input_size, 3], tf.uint8)
    image = tf.cond(reason == 0, picture, lambda: blank)
    targets = sample_targets(cfg, matrix, tf.constant(False), keypoints, boxes, width, height)
    return (image, *targets, reason)


def sample_function(cfg, tensors, training, shard_index):
    """The map function (draw int64, index int64) -> (image, heatmaps, pafs, mask, reason, path,
    draw).

    draw counts the samples this shard has drawn (the seed of its randomness); index is the
    record's row in `tensors` (RecordTensors). A training dataset's samples share one set of
    XLA kernels (make_kernels).
    """
    kernels = make_kernels(cfg) if training else None

    def make(draw, index):
        record = tensors.record(index)
        if training:
            draws = sample_draws(cfg.seed, shard_index, draw, index)
            sample = training_sample(cfg, record, draws, kernels)
        else:
            sample = validation_sample(cfg, record)
        return (*sample, record[0], draw)

    return make


# ---------------------------------------------------------------------------------------------
# tf.data
# ---------------------------------------------------------------------------------------------
def track_skips(state, sample):
    """tf.data scan function: find the samples dropped by errors and stop a broken data set.

    state: int64 (skipped in a row, next draw expected); sample: the map function's tuple. The
    map is order-preserving and its draw numbers are consecutive, so a gap in them is the
    number of samples that ignore_errors dropped since the last one. Many skips in a row mean
    the data set itself is broken, so the pipeline then stops with an error naming the last
    file, rather than spinning forever. Returns the sample with that number (int64) in place of
    its draw.
    """
    in_a_row, expected = state
    reason, path, draw = sample[4], sample[5], sample[6]
    failed = draw - expected
    in_a_row = tf.where(reason > 0, in_a_row + failed + 1, tf.constant(0, tf.int64))
    check = tf.debugging.Assert(
        (in_a_row < dg.MAX_CONSECUTIVE_SKIPS) & (failed < dg.MAX_CONSECUTIVE_SKIPS), [
            f"{dg.MAX_CONSECUTIVE_SKIPS} samples in a row were skipped; the data set looks "
            "broken. Last file and reason code:", path, reason])
    with tf.control_dependencies([check]):
        return (in_a_row, draw + 1), (*sample[:6], tf.identity(failed))


def keep_function(reporter):
    """tf.data filter predicate: keep good samples; report skipped and failed ones.

    reporter: a data_generator.SkipReporter, called through tf.py_function only when there is
    something to report (good samples run no Python), or None to print the skips with tf.print
    on stderr (as under tf.data service, where the dataset must be pure graph ops).
    """
    names = tf.constant(dg.SKIP_REASONS)

    def report_in_python(reason, path, failed):
        file_name = path.numpy().decode("utf-8", "replace")
        if int(failed):
            reporter.report("error", f"before {file_name}", f"{int(failed)} sample(s) before "
                            f"{file_name}: {SKIP_MESSAGES['error']}")
        if int(reason):
            name = dg.SKIP_REASONS[int(reason)]
            reporter.report(name, file_name, f"{file_name}: {SKIP_MESSAGES[name]}")
        return True

    def report(reason, path, failed):
        if reporter is not None:
            return tf.reshape(tf.py_function(report_in_python, [reason, path, failed], tf.bool),
                              [])
        printed = tf.print("sample skipped (", tf.gather(names, reason), "): ", path,
                           "; failed to decode before it: ", failed,
                           output_stream="file://stderr", sep="")
        with tf.control_dependencies([printed]):
            return tf.constant(True)

    def keep(image, heatmaps, pafs, mask, reason, path, failed):
        quiet = (reason == 0) & (failed == 0)
        reported = tf.cond(quiet, lambda: tf.constant(True), lambda: report(reason, path, failed))
        with tf.control_dependencies([reported]):
            return tf.identity(reason == 0)

    return keep


# What a skip log line says after the file name, by reason.
SKIP_MESSAGES = {
    "missing_image": "image file not found",
    "unreadable_image": "not a readable image (empty, not JPEG/PNG/BMP/WebP, or truncated)",
    "size_mismatch": "image size differs from the record's",
    "error": "dropped by a decoding error (TensorFlow's warning log has its message)",
}


def sample_dataset(cfg, records, indices, training, shard_index, reporter=None):
    """Unbatched dataset of (image uint8 (S, S, 3) RGB, {"heatmaps", "pafs", "mask"}).

    records: data_generator.Records; indices: dataset of (draw, index) int64 pairs (the shuffled,
    sharded, enumerated record indices of make_dataset); reporter: see keep_function. The
    samples are made by a parallel, order-preserving map of graph ops (made_samples); skipped
    ones are counted, logged and dropped (checked_samples).
    """
    return checked_samples(made_samples(cfg, records, indices, training, shard_index), reporter)


def made_samples(cfg, records, indices, training, shard_index):
    """The map's dataset of sample_function tuples, bad files included (their reason > 0)."""
    make = sample_function(cfg, RecordTensors(records), training, shard_index)
    # The functions are graph ops already; AutoGraph's conversion would only slow the tracing.
    return indices.map(tf.autograph.experimental.do_not_convert(make),
                       num_parallel_calls=tf.data.AUTOTUNE)


def checked_samples(samples, reporter=None):
    """(image, targets) pairs of made_samples' good samples; the others counted and reported.

    These stages see every sample one after another (the scan must), so they are the serial
    part of the pipeline; benchmarks/bench_pipeline.py times them alone.
    """
    plain = tf.autograph.experimental.do_not_convert
    # Only a file that passed every check and still failed to decode raises in the map.
    samples = samples.ignore_errors(log_warning=True)
    start = (tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    samples = samples.scan(start, plain(track_skips)).filter(plain(keep_function(reporter)))
    return samples.map(plain(_as_training_pair), num_parallel_calls=tf.data.AUTOTUNE)


def _as_training_pair(image, heatmaps, pafs, mask, reason, path, failed):
    return image, {"heatmaps": heatmaps, "pafs": pafs, "mask": mask}
