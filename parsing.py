"""From network maps to people: peaks, PAF limb scores, limb matching and assembly.

This is the parsing step of Cao et al. (CVPR 2017), shared by demo.py, evaluate.py, the exported
runtimes and the real-time benchmark. inference.py runs a model to get the maps; this module
never sees a model.

Coordinate conventions (used by every function below):
- Maps are grid maps (rows, cols, channels) as the network outputs them. Grid cell (r, c) stands
  for the network-input pixel (x, y) = (c * stride + (stride - 1) / 2,
  r * stride + (stride - 1) / 2).
- Peak positions are continuous grid coordinates (x, y) = (column, row): the centre of cell (r, c)
  is (c, r), so a sub-cell refinement simply adds a fraction.
- Network-input pixels map to original-image pixels by x_orig = (x_input - offset_x) / scale_x
  (the same for y), where scale is the resize factor from the original image to the network
  input and offset absorbs resampling conventions (see inference.predict_maps).
- Everything returned to callers is (x, y) in original-image pixels.

The functions (find_peaks, score_limbs, match_limbs, assemble_people, parse_poses) are pure
numpy (plus cv2.GaussianBlur and scipy's assignment solver) and work at grid resolution: nothing
is up-sampled to image size, which is what makes parsing take about a millisecond.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from config import LIMBS, NUM_HEATMAPS, NUM_JOINTS, NUM_LIMBS, NUM_PAFS, NUM_TREE_LIMBS

# Heatmap values are clamped to this before taking logarithms in the sub-cell fit (network
# outputs next to a peak can be zero or negative), and a found joint's score is at least this,
# so that score 0 always means "missing".
LOG_FLOOR = 1e-6
# Decimals of the sub-pixel coordinates written to submission files (1/100 pixel changes no
# OKS noticeably and keeps the files small).
COORDINATE_DECIMALS = 2

LIMB_A = np.array([a for a, _ in LIMBS], dtype=np.int64)
LIMB_B = np.array([b for _, b in LIMBS], dtype=np.int64)




class Peaks(NamedTuple):
    """Joint candidates of one image, grouped by joint.

    joint (M,) int: joint index of each candidate, non-decreasing.
    xy (M, 2) float64: refined (x, y) position in grid coordinates (column, row).
    score (M,) float32: heatmap value at the peak cell, at least LOG_FLOOR.
    start (NUM_JOINTS + 1,) int: the candidates of joint j are start[j]:start[j + 1].
    """

    joint: np.ndarray
    xy: np.ndarray
    score: np.ndarray
    start: np.ndarray


class Connections(NamedTuple):
    """Limb candidates: pairs of peaks (global indices into Peaks) and their PAF scores.

    limb (K,) int; index_a (K,) int, a peak of joint LIMBS[limb][0]; index_b (K,) int, a peak of
    joint LIMBS[limb][1]; score (K,) float64, the mean PAF alignment along the segment plus the
    length prior. Sorted by limb, then by decreasing score.
    """

    limb: np.ndarray
    index_a: np.ndarray
    index_b: np.ndarray
    score: np.ndarray


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def check_maps(heatmaps, pafs):
    """Raise ValueError naming the problem if the maps have wrong shapes or non-finite values.

    heatmaps (rows, cols, NUM_HEATMAPS or NUM_JOINTS) and pafs (rows, cols, NUM_PAFS).
    """
    heatmaps, pafs = np.asarray(heatmaps), np.asarray(pafs)
    if heatmaps.ndim != 3 or heatmaps.shape[2] not in (NUM_JOINTS, NUM_HEATMAPS):
        raise ValueError(f"heatmaps must have shape (rows, cols, {NUM_HEATMAPS}), "
                         f"got {heatmaps.shape}")
    if pafs.ndim != 3 or pafs.shape[2] != NUM_PAFS:
        raise ValueError(f"pafs must have shape (rows, cols, {NUM_PAFS}), got {pafs.shape}")
    if heatmaps.shape[:2] != pafs.shape[:2]:
        raise ValueError(f"heatmaps grid {heatmaps.shape[:2]} differs from pafs grid "
                         f"{pafs.shape[:2]}")
    for name, maps in (("heatmaps", heatmaps), ("pafs", pafs)):
        finite = np.isfinite(maps)
        if not finite.all():
            channels = np.nonzero(~finite.all(axis=(0, 1)))[0].tolist()
            raise ValueError(
                f"{name} contain {int(np.isnan(maps).sum())} NaN and "
                f"{int(np.isinf(maps).sum())} infinite values (channels {channels}); "
                "the network diverged or was fed an invalid image")


# --------------------------------------------------------------------------------------------
# Peaks
# --------------------------------------------------------------------------------------------
def _local_maxima(smooth, threshold):
    """(row, col, joint) int arrays of the cells >= their 8 neighbours and > threshold.

    smooth: (rows, cols, C) float32. The 3x3 maximum filter of all channels at once is one
    cv2.dilate of the (rows, cols * C) view with a kernel whose columns are C apart (so each
    cell only meets its own channel; outside the image counts as -inf). A plateau of equal
    maxima (a Gaussian centred exactly between two cells) would give two peaks for one joint,
    so a peak is dropped when an earlier neighbour in raster order (up-left, up, up-right,
    left) is an equal peak. Results are in raster order.
    """
    rows, cols, channels = smooth.shape
    kernel = np.zeros((3, 2 * channels + 1), dtype=np.uint8)
    kernel[:, ::channels] = 1
    local_max = cv2.dilate(smooth.reshape(rows, cols * channels), kernel).reshape(smooth.shape)
    is_peak = (smooth >= local_max) & (smooth > threshold)
    cell, joint = np.divmod(np.flatnonzero(is_peak), channels)
    row, col = np.divmod(cell, cols)
    keep = np.ones(len(cell), dtype=bool)
    value = smooth[row, col, joint]
    for d_row, d_col in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
        other_row, other_col = row + d_row, col + d_col
        inside = (other_row >= 0) & (other_col >= 0) & (other_col < cols)
        other_row, other_col = np.maximum(other_row, 0), np.clip(other_col, 0, cols - 1)
        keep &= ~(inside & (smooth[other_row, other_col, joint] == value)
                  & is_peak[other_row, other_col, joint])
    return row[keep], col[keep], joint[keep]


def _log_parabola_vertex(before, centre, after):
    """Vertex of the parabola through the logs of samples at -1, 0, 1; NaN where no maximum.

    The log of a Gaussian is a parabola, so this recovers a Gaussian's centre exactly, where a
    weighted centroid is biased towards the cell centre.
    """
    log_before, log_centre, log_after = (np.log(np.maximum(values, LOG_FLOOR))
                                         for values in (before, centre, after))
    curvature = log_before - 2.0 * log_centre + log_after
    safe = np.where(curvature < 0, curvature, -1.0)
    return np.where(curvature < 0, 0.5 * (log_before - log_after) / safe, np.nan)


def _refine_axis(fit_map, row, col, joint, axis):
    """Sub-cell offsets of peaks (row, col, joint) along axis 1 (x, columns) or 0 (y, rows).

    The three-sample stencil is centred on the peak, or moved one cell inwards at the border so
    that a joint in the outermost half cell is still located (the parabola is extrapolated);
    offsets are clipped to half a cell, and 0 where no maximum is found.
    """
    size = fit_map.shape[axis]
    if size < 3:
        return np.zeros(len(row))
    index = col if axis == 1 else row
    middle = np.clip(index, 1, size - 2)

    def sample(shift):
        moved = middle + shift
        return fit_map[row, moved, joint] if axis == 1 else fit_map[moved, col, joint]

    vertex = _log_parabola_vertex(sample(-1), sample(0), sample(1)) + (middle - index)
    return np.clip(np.nan_to_num(vertex, nan=0.0), -0.5, 0.5)


def _strongest_per_joint(joint, value, limit):
    """Indices of the peaks grouped by joint (raster order within a joint), keeping only the
    `limit` highest values of each joint."""
    order = np.argsort(joint, kind="stable")
    counts = np.bincount(joint, minlength=NUM_JOINTS)
    if not len(joint) or counts.max() <= limit:
        return order
    by_value = np.lexsort((-value, joint))
    rank = np.arange(len(joint)) - (np.cumsum(counts) - counts)[joint[by_value]]
    kept = by_value[rank < limit]
    return kept[np.lexsort((kept, joint[kept]))]


def find_peaks(heatmaps, cfg, smoothing=None):
    """Joint candidates: Gaussian smoothing, 3x3 non-maximum suppression, sub-cell refinement.

    heatmaps: (rows, cols, >= NUM_JOINTS) grid maps; channels past NUM_JOINTS (background) are
    ignored. Smoothing sigma is `smoothing` grid cells of these maps, by default
    cfg.peak_smoothing (maps on a finer grid than the network's pass a larger sigma, see
    grid_mapping; 0: none); a peak must exceed cfg.peak_threshold on the smoothed map, and its
    position is refined on the smoothed map (a smoothed Gaussian is still a Gaussian). Each
    joint keeps its cfg.max_peaks_per_joint strongest peaks: enough for any crowd, and it
    bounds the pair scoring, which grows with the square of the count, on the noisy maps of an
    untrained network. Returns Peaks in grid coordinates.
    """
    maps = np.ascontiguousarray(np.asarray(heatmaps)[:, :, :NUM_JOINTS], dtype=np.float32)
    sigma = float(cfg.peak_smoothing if smoothing is None else smoothing)
    smooth = cv2.GaussianBlur(maps, (0, 0), sigma) if sigma > 0 else maps
    smooth = smooth.reshape(maps.shape)  # OpenCV drops a length-1 channel axis.
    row, col, joint = _local_maxima(smooth, cfg.peak_threshold)
    limit = int(cfg.max_peaks_per_joint)
    order = _strongest_per_joint(joint, smooth[row, col, joint], limit)
    row, col, joint = row[order], col[order], joint[order]
    d_x = _refine_axis(smooth, row, col, joint, axis=1)
    d_y = _refine_axis(smooth, row, col, joint, axis=0)
    xy = np.stack([col + d_x, row + d_y], axis=1).astype(np.float64).reshape(-1, 2)
    score = np.maximum(maps[row, col, joint], LOG_FLOOR).astype(np.float32)
    start = np.searchsorted(joint, np.arange(NUM_JOINTS + 1)).astype(np.int64)
    return Peaks(joint.astype(np.int64), xy, score, start)


# --------------------------------------------------------------------------------------------
# Limbs
# --------------------------------------------------------------------------------------------
def _candidate_pairs(peaks):
    """Every (limb, peak of joint a, peak of joint b) triple, built without Python loops."""
    counts = np.diff(peaks.start)
    count_b = counts[LIMB_B]
    pairs_per_limb = counts[LIMB_A] * count_b
    limb = np.repeat(np.arange(NUM_LIMBS), pairs_per_limb)
    within = np.arange(int(pairs_per_limb.sum())) - (np.cumsum(pairs_per_limb)
                                                     - pairs_per_limb)[limb]
    divisor = np.maximum(count_b, 1)[limb]
    return (limb, peaks.start[LIMB_A][limb] + within // divisor,
            peaks.start[LIMB_B][limb] + within % divisor)


def _bilinear_pair(maps, points, channel):
    """Bilinear samples of channels `channel` and `channel + 1` of maps at grid points (x, y).

    maps (rows, cols, C); points (K, S, 2) in grid coordinates; channel (K, 1) int. Points
    outside the grid take the border value. Returns two (K, S) arrays. Bilinear rather than
    nearest-cell sampling matters at grid resolution: the nearest cell of a point near a joint
    often lies just beyond the limb's end, where the field is zero. The four cells are read
    by flat index (one take each), which is several times faster than 3-D fancy indexing.
    """
    rows, cols, channels = maps.shape
    x = np.clip(points[:, :, 0], 0.0, cols - 1.0)
    y = np.clip(points[:, :, 1], 0.0, rows - 1.0)
    left = np.minimum(x.astype(np.int64), max(cols - 2, 0))
    top = np.minimum(y.astype(np.int64), max(rows - 2, 0))
    right, bottom = np.minimum(left + 1, cols - 1), np.minimum(top + 1, rows - 1)
    weight_x, weight_y = x - left, y - top
    keep_x, keep_y = 1 - weight_x, 1 - weight_y
    flat = np.ascontiguousarray(maps).reshape(-1)
    upper, lower = top * (cols * channels) + channel, bottom * (cols * channels) + channel
    corners = (upper + left * channels, upper + right * channels,
               lower + left * channels, lower + right * channels)
    samples = []
    for component in (0, 1):
        upper_left, upper_right, lower_left, lower_right = (
            flat.take(corner + component) for corner in corners)
        samples.append((upper_left * keep_x + upper_right * weight_x) * keep_y
                       + (lower_left * keep_x + lower_right * weight_x) * weight_y)
    return samples


def passes_sample_rule(passing, samples, cfg):
    """Which candidate limbs have enough samples above the PAF threshold (bool array).

    passing: (K,) int, samples above cfg.paf_threshold out of `samples` per candidate.
    cfg.limb_acceptance "more_than" is the original's rule, passing > paf_min_fraction *
    samples (9 of 10 for 0.8); "at_least" accepts passing >= paf_min_fraction * samples
    (8 of 10).
    """
    needed = cfg.paf_min_fraction * samples
    if cfg.limb_acceptance == "more_than":
        return passing > needed
    if cfg.limb_acceptance == "at_least":
        return passing >= needed
    raise ValueError(f"limb_acceptance must be 'more_than' or 'at_least', got "
                     f"{cfg.limb_acceptance!r}")


def score_limbs(peaks, pafs, cfg, image_height=None, min_length=None):
    """Score every candidate pair of every limb at once by the PAF line integral.

    pafs: (rows, cols, NUM_PAFS) grid maps. For each pair, cfg.paf_samples points from joint a
    to joint b read the limb's PAF (bilinear) and take its dot product with the segment's unit
    vector. A pair is kept when enough samples exceed cfg.paf_threshold (see
    passes_sample_rule) and mean + min(0.5 * image_height / length - 1, 0) > 0 (the paper's
    prior against limbs longer than half the image). The ratio is scale-free, so both are in
    grid cells; image_height defaults to the number of grid rows. A pair must also be longer
    than min_length grid cells (default cfg.min_limb_length; maps on a finer grid than the
    network's pass a larger one, see inference.grid_mapping). Returns Connections.
    """
    limb, index_a, index_b = _candidate_pairs(peaks)
    start_xy = peaks.xy[index_a]
    delta = peaks.xy[index_b] - start_xy
    length = np.hypot(delta[:, 0], delta[:, 1])
    unit = delta / np.maximum(length, 1e-9)[:, None]
    steps = np.linspace(0.0, 1.0, int(cfg.paf_samples))
    points = start_xy[:, None, :] + steps[None, :, None] * delta[:, None, :]
    paf_x, paf_y = _bilinear_pair(pafs, points, 2 * limb[:, None])
    alignment = paf_x * unit[:, 0:1] + paf_y * unit[:, 1:2]
    height = float(pafs.shape[0] if image_height is None else image_height)
    prior = np.minimum(0.5 * height / np.maximum(length, 1e-9) - 1.0, 0.0)
    score = alignment.mean(axis=1) + prior if len(limb) else np.zeros(0)
    passing = (alignment > cfg.paf_threshold).sum(axis=1)
    accepted = passes_sample_rule(passing, alignment.shape[1], cfg)
    shortest = float(cfg.min_limb_length if min_length is None else min_length)
    keep = np.nonzero(accepted & (score > 0) & (length > max(shortest, 0.0)))[0]
    keep = keep[np.lexsort((-score[keep], limb[keep]))]
    return Connections(limb[keep], index_a[keep], index_b[keep], score[keep])


def _subset(connections, positions):
    positions = np.asarray(positions, dtype=np.int64)
    return Connections(*(field[positions] for field in connections))


def _match_greedy(connections):
    """Positions kept by greedy matching: best score first, each peak once per limb."""
    accepted, used_a, used_b, current = [], set(), set(), -1
    for position, (limb, a, b) in enumerate(zip(connections.limb.tolist(),
                                               connections.index_a.tolist(),
                                               connections.index_b.tolist())):
        if limb != current:
            used_a, used_b, current = set(), set(), limb
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
            accepted.append(position)
    return accepted


def _match_optimal(connections, peaks):
    """Positions kept by a maximum-total-score matching per limb (Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    accepted = []
    bounds = np.searchsorted(connections.limb, np.arange(NUM_LIMBS + 1))
    for limb in np.nonzero(np.diff(bounds))[0]:
        first, last = bounds[limb], bounds[limb + 1]
        # Peaks of one joint are contiguous, so local indices are offsets from the joint's start.
        local_a = connections.index_a[first:last] - peaks.start[LIMB_A[limb]]
        local_b = connections.index_b[first:last] - peaks.start[LIMB_B[limb]]
        if np.bincount(local_a).max() == 1 and np.bincount(local_b).max() == 1:
            accepted.extend(range(first, last))  # no peak in two pairs: nothing to choose
            continue
        weights = np.zeros((local_a.max() + 1, local_b.max() + 1))
        position = np.full(weights.shape, -1, dtype=np.int64)
        weights[local_a, local_b] = connections.score[first:last]
        position[local_a, local_b] = np.arange(first, last)
        chosen = position[linear_sum_assignment(weights, maximize=True)]
        accepted.extend(np.sort(chosen[chosen >= 0]).tolist())  # sorted = by decreasing score
    return accepted


def match_limbs(connections, peaks, method="optimal"):
    """Bipartite matching per limb: each peak takes part in at most one connection per limb.

    method "optimal" maximises the total score of each limb's connections (Hungarian algorithm,
    as the paper formulates it); "greedy" takes the best-scoring pair first (the original
    code's approximation), which mismatches crossing limbs more often. connections must be
    sorted as score_limbs returns them; the result keeps that order.
    """
    if method == "greedy":
        return _subset(connections, _match_greedy(connections))
    if method == "optimal":
        return _subset(connections, _match_optimal(connections, peaks))
    raise ValueError(f"limb_matching must be 'optimal' or 'greedy', got {method!r}")


# --------------------------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------------------------
def _limb_graph_paths():
    """(hops, between) over the limb graph: hops[j, k] = number of limbs on a shortest path
    from joint j to joint k; between[j, k] = bit mask of the joints strictly inside it."""
    neighbours = [[] for _ in range(NUM_JOINTS)]
    for a, b in LIMBS:
        neighbours[a].append(b)
        neighbours[b].append(a)
    hops = np.zeros((NUM_JOINTS, NUM_JOINTS), dtype=np.int64)
    between = np.zeros((NUM_JOINTS, NUM_JOINTS), dtype=np.int64)
    for source in range(NUM_JOINTS):
        inside, frontier, depth = {source: 0}, [source], 0
        while frontier:
            depth, following = depth + 1, []
            for joint in frontier:
                for other in neighbours[joint]:
                    if other not in inside:
                        inside[other] = inside[joint] | ((1 << joint) if joint != source else 0)
                        hops[source, other], between[source, other] = depth, inside[other]
                        following.append(other)
            frontier = following
    return hops, between


LIMB_HOPS, LIMB_BETWEEN = _limb_graph_paths()
# The joints that must be missing from two fragments for them to be joined across joints j and
# k: LIMB_BETWEEN[j, k] when j and k are >= 2 limbs apart, else every bit (never joined).
LIMB_BLOCKED = np.where(LIMB_HOPS >= 2, LIMB_BETWEEN, -1)


class _Assembly:
    """People being assembled. Per person: a row of peak indices (-1 missing), the total of its
    peak and limb scores, its number of joints, and the summed length (grid cells) and number
    of its limbs, which give its scale when fragments are joined."""

    def __init__(self, peaks):
        self.peaks = peaks
        self.peak_score = peaks.score.tolist()
        self.person_of = [-1] * len(peaks.joint)
        self.members, self.totals, self.counts, self.lengths, self.limbs = [], [], [], [], []

    def start(self, peak_list, score=0.0, length=0.0, limbs=0):
        """A new person made of the given peaks (joined by `limbs` limbs)."""
        row = [-1] * NUM_JOINTS
        for peak in peak_list:
            row[int(self.peaks.joint[peak])] = peak
            self.person_of[peak] = len(self.members)
        self.members.append(row)
        self.totals.append(sum(self.peak_score[peak] for peak in peak_list) + score)
        self.counts.append(len(peak_list))
        self.lengths.append(length)
        self.limbs.append(limbs)

    def extend(self, owner, joint, peak, score, length):
        self.members[owner][joint] = peak
        self.person_of[peak] = owner
        self.totals[owner] += self.peak_score[peak] + score
        self.counts[owner] += 1
        self.lengths[owner] += length
        self.limbs[owner] += 1

    def merge(self, keep, drop, score=0.0, length=None):
        """Move person `drop` into `keep` (disjoint joints); a joining limb adds its score."""
        for joint, peak in enumerate(self.members[drop]):
            if peak >= 0:
                self.members[keep][joint] = peak
                self.person_of[peak] = keep
        self.totals[keep] += self.totals[drop] + score
        self.counts[keep] += self.counts[drop]
        self.lengths[keep] += self.lengths[drop] + (length or 0.0)
        self.limbs[keep] += self.limbs[drop] + (length is not None)
        self.members[drop] = None

    def alive(self):
        return [index for index, row in enumerate(self.members) if row is not None]


def _add_connection(assembly, limb, a, b, score, length):
    """Apply one matched limb: start, extend or merge people (see assemble_people)."""
    joint_a, joint_b = LIMBS[limb]
    owner_a, owner_b = assembly.person_of[a], assembly.person_of[b]
    if owner_a < 0 and owner_b < 0:
        if limb < NUM_TREE_LIMBS:
            assembly.start([a, b], score, length, limbs=1)
    elif owner_a < 0 or owner_b < 0:
        owner, joint, peak = (owner_a, joint_b, b) if owner_b < 0 else (owner_b, joint_a, a)
        if assembly.members[owner][joint] < 0:
            assembly.extend(owner, joint, peak, score, length)
    elif owner_a != owner_b:
        first, second = assembly.members[owner_a], assembly.members[owner_b]
        if all(x < 0 or y < 0 for x, y in zip(first, second)):
            assembly.merge(owner_a, owner_b, score, length)


def _fragment_pairs(assembly, alive, max_ratio):
    """Pairs of partial people that are plausibly one person split by missing joints.

    Two people qualify when their joints are disjoint and some joint j of one and k of the
    other are >= 2 limbs apart with every joint in between missing from both (so no PAF could
    have joined them); at least one of them must have a limb, which gives the scale. Their
    distance divided by (limbs apart x the pair's larger mean limb length) must be at most
    max_ratio. All (joint of a person with limbs) x (joint of another person) combinations
    are tested at once on bit masks (LIMB_BLOCKED), distances only for those that qualify.
    Returns [(ratio, first, second)], indices into assembly.members, closest pair first, each
    pair once.
    """
    if len(alive) < 2:
        return []
    alive = np.asarray(alive)
    rows = np.array([assembly.members[index] for index in alive], dtype=np.int64)
    limbs = np.array([assembly.limbs[index] for index in alive])
    mean_length = np.array([assembly.lengths[index] for index in alive]) / np.maximum(limbs, 1)
    masks = ((rows >= 0) * (1 << np.arange(NUM_JOINTS))).sum(axis=1)
    owner, joint = np.nonzero(rows >= 0)  # one entry per (person, joint) present
    xy = assembly.peaks.xy[rows[owner, joint]]
    anchored = np.nonzero(limbs[owner] > 0)[0]
    first, joint_a = owner[anchored], joint[anchored]
    mask_a, mask_b = masks[first][:, None], masks[owner][None, :]
    blocked = (mask_a & mask_b) | (LIMB_BLOCKED[joint_a][:, joint] & (mask_a | mask_b))
    hit_a, hit_b = np.nonzero((blocked == 0) & ((limbs[owner] == 0)[None, :]
                                                | (first[:, None] < owner[None, :])))
    gap = xy[anchored[hit_a]] - xy[hit_b]  # each pair of people once (above)
    scale = (np.maximum(mean_length[first[hit_a]], mean_length[owner[hit_b]])
             * LIMB_HOPS[joint_a[hit_a], joint[hit_b]])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.hypot(gap[:, 0], gap[:, 1]) / scale
    close = ratio <= max_ratio
    order = np.argsort(ratio[close], kind="stable")
    pair_first, pair_second = first[hit_a[close]][order], owner[hit_b[close]][order]
    pair_ratio = ratio[close][order]
    key = np.minimum(pair_first, pair_second) * len(alive) + np.maximum(pair_first, pair_second)
    _, unique = np.unique(key, return_index=True)  # the closest entry of each pair
    unique.sort()
    return [(float(pair_ratio[i]), int(alive[pair_first[i]]), int(alive[pair_second[i]]))
            for i in unique]


def join_fragments(assembly, max_ratio):
    """Merge partial people (and lone peaks) separated only by missing joints.

    The PAFs cannot join two parts of one person whose connecting joint is missing: a person
    cut off at the top of the image has no neck, so its arms and legs stay apart, and a joint
    whose neighbours are all hidden has no limb at all. Peaks in no person become one-joint
    people here; then qualifying pairs (see _fragment_pairs) are merged closest first, in
    passes where each person takes part in one merge at most (so every merge is judged on
    up-to-date people), until no pair is left. Lone peaks left over are dropped by min_parts.
    """
    for peak, owner in enumerate(assembly.person_of):
        if owner < 0:
            assembly.start([peak])
    while True:
        touched = set()
        for _, first, second in _fragment_pairs(assembly, assembly.alive(), max_ratio):
            # A person that grew in this pass is compared afresh in the next one.
            if first not in touched and second not in touched:
                assembly.merge(first, second)
                touched.update((first, second))
        if not touched:
            return


def _select_people(assembly, cfg):
    """Drop small and weak people; (members (N, NUM_JOINTS), mean scores (N,)) best first."""
    kept = [index for index in assembly.alive()
            if assembly.counts[index] >= cfg.min_parts
            and assembly.totals[index] / assembly.counts[index] >= cfg.min_person_score]
    rows = np.array([assembly.members[index] for index in kept],
                    dtype=np.int64).reshape(-1, NUM_JOINTS)
    scores = np.array([assembly.totals[index] / assembly.counts[index] for index in kept],
                      dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order]


def assemble_people(peaks, connections, cfg):
    """Group matched limbs into people over the limb graph, in config.LIMBS order.

    Tree limbs start new people, extend the person holding one end, or merge two partial people
    whose joints are disjoint; the redundant limbs (index >= NUM_TREE_LIMBS) only extend or
    merge. Then, unless cfg.fragment_join_ratio is 0, parts separated only by missing joints
    are joined (join_fragments). A person's total is the sum of its peak and limb scores;
    people with fewer than cfg.min_parts joints or total / joints below cfg.min_person_score
    are dropped. Returns (members (N, NUM_JOINTS) int peak indices, -1 where missing; scores
    (N,) float32 = total / joints), best person first.
    """
    assembly = _Assembly(peaks)
    delta = peaks.xy[connections.index_b] - peaks.xy[connections.index_a]
    lengths = np.hypot(delta[:, 0], delta[:, 1]).tolist()
    for limb, a, b, score, length in zip(connections.limb.tolist(), connections.index_a.tolist(),
                                         connections.index_b.tolist(),
                                         connections.score.tolist(), lengths):
        _add_connection(assembly, limb, a, b, score, length)
    max_ratio = float(cfg.fragment_join_ratio)
    if max_ratio > 0:
        join_fragments(assembly, max_ratio)
    return _select_people(assembly, cfg)


# --------------------------------------------------------------------------------------------
# From maps to people in pixels
# --------------------------------------------------------------------------------------------
def grid_to_pixels(xy, stride, scale=(1.0, 1.0), offset=(0.0, 0.0)):
    """Grid coordinates (..., 2) -> original-image pixels (..., 2), see the module docstring."""
    input_xy = np.asarray(xy, dtype=np.float64) * stride + (stride - 1) / 2.0
    return (input_xy - np.asarray(offset, dtype=np.float64)) / np.asarray(scale, dtype=np.float64)


def people_from_members(peaks, members, stride, scale=(1.0, 1.0), offset=(0.0, 0.0)):
    """(N, NUM_JOINTS) peak indices (-1 missing) -> float32 (N, NUM_JOINTS, 3) (x, y, score)."""
    people = np.zeros(members.shape + (3,), dtype=np.float32)
    found = members >= 0
    chosen = members[found]
    people[found, :2] = grid_to_pixels(peaks.xy[chosen], stride, scale, offset)
    people[found, 2] = peaks.score[chosen]
    return people


def parse_poses(heatmaps, pafs, cfg, stride=None, scale=(1.0, 1.0), offset=(0.0, 0.0),
                image_height=None, smoothing=None, min_limb_length=None):
    """Grid maps -> people in original-image pixels.

    heatmaps (rows, cols, NUM_HEATMAPS), pafs (rows, cols, NUM_PAFS); stride defaults to
    cfg.stride; scale = (sx, sy) resize factor original -> network input; offset in
    network-input pixels (see grid_to_pixels); image_height in grid cells (default: rows);
    smoothing: peak smoothing sigma in cells of these maps (default cfg.peak_smoothing);
    min_limb_length: the shortest limb joined, in cells of these maps (default
    cfg.min_limb_length).
    Returns (people float32 (N, NUM_JOINTS, 3) of (x, y, score), all zero for missing joints;
    person_scores float32 (N,)), best person first. Raises ValueError on bad shapes or NaN/inf.
    """
    check_maps(heatmaps, pafs)
    pafs = np.asarray(pafs, dtype=np.float32)
    peaks = find_peaks(heatmaps, cfg, smoothing)
    connections = match_limbs(score_limbs(peaks, pafs, cfg, image_height, min_limb_length),
                              peaks, cfg.limb_matching)
    members, scores = assemble_people(peaks, connections, cfg)
    people = people_from_members(peaks, members, cfg.stride if stride is None else stride,
                                 scale, offset)
    return people, scores


def people_to_aic(people, integer=False):
    """(N, NUM_JOINTS, 3) people -> {"human1": [x, y, v] * 14, ...} for a submission file.

    x, y are floats rounded to COORDINATE_DECIMALS (sub-pixel: the official evaluator reads
    floats and divides them exactly), or whole-pixel ints when `integer` (the official then
    floor-divides half the squared distance, which costs a little, see aic_metric). v is 1
    for found joints (score > 0); missing joints are [0, 0, 0] (the metric ignores v).
    """
    result = {}
    people = np.asarray(people, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
    for index, person in enumerate(people):
        found = person[:, 2] > 0
        xy = np.where(found[:, None], person[:, :2], 0.0)
        if integer:
            xy = np.rint(xy).astype(np.int64).tolist()
        else:
            xy = np.round(xy, COORDINATE_DECIMALS).tolist()
        values = [[x, y, int(flag)] for (x, y), flag in zip(xy, found)]
        result[f"human{index + 1}"] = [value for joint in values for value in joint]
    return result


# --------------------------------------------------------------------------------------------
# Running the network: scales, mirror images, batches
