"""Tests of inference.py on hand-built maps (Gaussian blobs and constant PAF strips).

Maps are built here in grid units and parsed with stride 1 and scale 1, so the people come back
in the same coordinates as the skeletons placed on the grid.
"""

import copy
import threading
import time

import cv2
import numpy as np
import pytest

import config
import inference
import parsing
from config import FLIP_JOINTS, LIMBS, NUM_HEATMAPS, NUM_JOINTS, NUM_PAFS

# A standing person facing the camera, (x, y) offsets in grid cells from its centre; its right
# side is on the image's left.
SKELETON = np.array([
    (-2.5, -5.5), (-3.5, -2.5), (-4.0, 0.5),  # right shoulder, elbow, wrist
    (2.5, -5.5), (3.5, -2.5), (4.0, 0.5),  # left shoulder, elbow, wrist
    (-1.5, 1.0), (-1.7, 5.5), (-1.9, 10.0),  # right hip, knee, ankle
    (1.5, 1.0), (1.7, 5.5), (1.9, 10.0),  # left hip, knee, ankle
    (0.1, -9.2), (0.0, -6.0),  # head top, neck
])
SIGMA = 1.0  # Gaussian sigma of the test heatmaps, in grid cells.


def person_at(x, y):
    """(14, 3) keypoints (x, y, v=1) of SKELETON centred at (x, y)."""
    return np.concatenate([SKELETON + (x, y), np.ones((NUM_JOINTS, 1))], axis=1)


def draw_maps(people, rows, cols, width=1.0):
    """Heatmaps (max of Gaussians, background last) and PAFs (unit vectors on cells within
    `width` of each limb segment, averaged where people overlap) of people (P, 14, 3)."""
    grid_y, grid_x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    heatmaps = np.zeros((rows, cols, NUM_HEATMAPS), dtype=np.float32)
    sums = np.zeros((rows, cols, NUM_PAFS))
    counts = np.zeros((rows, cols, len(LIMBS)))
    for person in people:
        for joint, (x, y, v) in enumerate(person):
            if v > 0:
                blob = np.exp(-((grid_x - x) ** 2 + (grid_y - y) ** 2) / (2 * SIGMA ** 2))
                heatmaps[:, :, joint] = np.maximum(heatmaps[:, :, joint], blob)
        for limb, (a, b) in enumerate(LIMBS):
            if person[a, 2] > 0 and person[b, 2] > 0:
                vector = person[b, :2] - person[a, :2]
                length = np.hypot(*vector)
                unit = vector / length
                dx, dy = grid_x - person[a, 0], grid_y - person[a, 1]
                along, across = dx * unit[0] + dy * unit[1], np.abs(dx * unit[1] - dy * unit[0])
                on = (along >= 0) & (along <= length) & (across <= width)
                sums[on, 2 * limb] += unit[0]
                sums[on, 2 * limb + 1] += unit[1]
                counts[on, limb] += 1
    heatmaps[:, :, -1] = 1 - heatmaps[:, :, :NUM_JOINTS].max(axis=2)
    pafs = sums / np.maximum(np.repeat(counts, 2, axis=2), 1)
    return heatmaps, pafs.astype(np.float32)


@pytest.fixture
def cfg():
    return config.make_config("cpu")


def parse(heatmaps, pafs, cfg):
    return parsing.parse_poses(heatmaps, pafs, cfg, stride=1)


def match_people(found, expected):
    """Order found people like expected ones (by neck position) and return them."""
    order = [int(np.argmin(np.hypot(*(found[:, 13, :2] - person[13, :2]).T)))
             for person in expected]
    return found[order]


def test_two_people_side_by_side_are_separated(cfg):
    expected = np.stack([person_at(10.3, 11.4), person_at(26.7, 11.6)])
    people, scores = parse(*draw_maps(expected, 26, 40), cfg)
    assert people.shape == (2, NUM_JOINTS, 3) and scores.shape == (2,)
    ordered = match_people(people, expected)
    np.testing.assert_allclose(ordered[:, :, :2], expected[:, :, :2], atol=0.1)
    # A joint's score is the heatmap value at its peak cell.
    offsets = expected[:, :, :2] - np.rint(expected[:, :, :2])
    np.testing.assert_allclose(ordered[:, :, 2],
                               np.exp(-(offsets ** 2).sum(axis=2) / (2 * SIGMA ** 2)), rtol=1e-5)
    assert people.dtype == np.float32 and scores.dtype == np.float32


def test_crossing_forearms_go_to_their_own_person(cfg):
    left, right = person_at(12.3, 12.4), person_at(20.7, 12.4)
    left[4, :2], left[5, :2] = (16.0, 9.0), (20.5, 12.5)  # left forearm reaches right
    right[1, :2], right[2, :2] = (19.5, 8.5), (15.0, 12.5)  # and crosses this one
    expected = np.stack([left, right])
    people, _ = parse(*draw_maps(expected, 26, 34), cfg)
    assert len(people) == 2
    ordered = match_people(people, expected)
    np.testing.assert_allclose(ordered[:, :, :2], expected[:, :, :2], atol=0.1)


def test_missing_joints_come_out_as_zeros(cfg):
    person = person_at(10.3, 11.4)
    person[[7, 8], 2] = 0  # right knee and ankle not visible
    people, _ = parse(*draw_maps(person[None], 26, 22), cfg)
    assert len(people) == 1
    assert (people[0, [7, 8]] == 0).all()
    present = [j for j in range(NUM_JOINTS) if j not in (7, 8)]
    np.testing.assert_allclose(people[0, present, :2], person[present, :2], atol=0.1)


def test_person_without_neck_is_joined_back_together(cfg):
    person = person_at(10.3, 11.4)
    person[[12, 13], 2] = 0  # cut at the top: no PAF links the left and right halves
    maps = draw_maps(person[None], 26, 22)
    people, _ = parse(*maps, cfg)
    assert len(people) == 1
    assert (people[0, :12, 2] > 0).all() and (people[0, 12:] == 0).all()
    separate = copy.copy(cfg)
    separate.fragment_join_ratio = 0.0
    halves, _ = parse(*maps, separate)
    assert len(halves) == 2


def test_no_peaks_gives_no_people(cfg):
    people, scores = parse(np.zeros((10, 12, NUM_HEATMAPS)), np.zeros((10, 12, NUM_PAFS)), cfg)
    assert people.shape == (0, NUM_JOINTS, 3) and scores.shape == (0,)


@pytest.mark.parametrize("where, value, message", [
    ("heatmaps", np.nan, "NaN"), ("pafs", np.inf, "infinite"), ("heatmaps", -np.inf, "infinite"),
])
def test_non_finite_maps_raise_a_clear_error(cfg, where, value, message):
    maps = {"heatmaps": np.zeros((10, 12, NUM_HEATMAPS)), "pafs": np.zeros((10, 12, NUM_PAFS))}
    maps[where][3, 4, 5] = value
    with pytest.raises(ValueError, match=f"{where} contain.*{message}.*channels \\[5\\]"):
        parse(maps["heatmaps"], maps["pafs"], cfg)


def test_wrong_map_shapes_raise_a_clear_error(cfg):
    with pytest.raises(ValueError, match="pafs must have shape"):
        parse(np.zeros((10, 12, NUM_HEATMAPS)), np.zeros((10, 12, 4)), cfg)
    with pytest.raises(ValueError, match="differs"):
        parse(np.zeros((10, 12, NUM_HEATMAPS)), np.zeros((10, 11, NUM_PAFS)), cfg)


def gaussian_map(x, y, rows=15, cols=15, sigma=0.875):
    heatmaps = np.zeros((rows, cols, NUM_HEATMAPS), dtype=np.float32)
    grid_y, grid_x = np.mgrid[0:rows, 0:cols]
    heatmaps[:, :, 4] = np.exp(-((grid_x - x) ** 2 + (grid_y - y) ** 2) / (2 * sigma ** 2))
    return heatmaps


@pytest.mark.parametrize("x, y, smoothing, tolerance", [
    (5.3, 7.6, 0.0, 1e-3),  # between cells: the log-parabola fit is exact for a Gaussian
    (5.3, 7.6, 0.5, 0.05),  # still close on the smoothed map
    (0.3, 7.6, 0.0, 1e-3),  # in the outermost half cell: the stencil moves inwards
    (9.8, 14.4, 0.0, 1e-3),  # near the bottom border
])
def test_sub_cell_refinement_recovers_a_gaussian_centre(cfg, x, y, smoothing, tolerance):
    cfg.peak_smoothing = smoothing
    peaks = parsing.find_peaks(gaussian_map(x, y), cfg)
    assert peaks.joint.tolist() == [4]
    assert peaks.start[4] == 0 and peaks.start[5] == 1
    assert np.abs(peaks.xy[0] - (x, y)).max() < tolerance
    assert peaks.score[0] == pytest.approx(
        np.exp(-((round(x) - x) ** 2 + (round(y) - y) ** 2) / (2 * 0.875 ** 2)), rel=1e-5)


def test_a_gaussian_exactly_between_two_cells_gives_one_peak(cfg):
    cfg.peak_smoothing = 0.0
    peaks = parsing.find_peaks(gaussian_map(5.5, 7.0), cfg)
    assert len(peaks.joint) == 1
    assert np.abs(peaks.xy[0] - (5.5, 7.0)).max() < 1e-3


def test_greedy_and_optimal_matching_keep_each_peak_once_per_limb(cfg):
    expected = np.stack([person_at(10.3, 11.4), person_at(18.7, 11.6)])
    heatmaps, pafs = draw_maps(expected, 26, 30)
    peaks = parsing.find_peaks(heatmaps, cfg)
    candidates = parsing.score_limbs(peaks, pafs, cfg)
    for method in ("greedy", "optimal"):
        matched = parsing.match_limbs(candidates, peaks, method)
        for limb in range(len(LIMBS)):
            chosen = matched.limb == limb
            assert len(set(matched.index_a[chosen])) == chosen.sum()
            assert len(set(matched.index_b[chosen])) == chosen.sum()
        assert len(matched.limb) == 2 * len(LIMBS)
    with pytest.raises(ValueError, match="limb_matching"):
        parsing.match_limbs(candidates, peaks, "best")


def test_optimal_matching_untangles_forearms_that_fool_greedy_matching(cfg):
    # Two left forearms that overlap (taken from a real AIC annotation): where the strips
    # overlap the field is the average, so the wrong pair elbow 0 -> wrist 1 scores best.
    people = np.zeros((2, NUM_JOINTS, 3))
    people[0, 4], people[0, 5] = (13.06, 10.62, 1), (10.56, 6.87, 1)
    people[1, 4], people[1, 5] = (8.27, 9.23, 1), (12.09, 8.88, 1)
    heatmaps, pafs = draw_maps(people, 16, 18)
    cfg.peak_smoothing = 0.0
    # The original's limb rule (the paper preset's): 8 of 10 samples above 0.05.
    cfg.paf_threshold, cfg.paf_min_fraction = 0.05, 0.8
    peaks = parsing.find_peaks(heatmaps, cfg)
    candidates = parsing.score_limbs(peaks, pafs, cfg)

    def pairs(method):
        matched = parsing.match_limbs(candidates, peaks, method)
        return sorted(tuple(np.rint(peaks.xy[[a, b]]).astype(int).ravel().tolist())
                      for a, b in zip(matched.index_a, matched.index_b))

    assert pairs("optimal") == [(8, 9, 12, 9), (13, 11, 11, 7)]
    assert pairs("greedy") == [(13, 11, 12, 9)]


def test_flip_permutation_is_an_involution():
    rng = np.random.default_rng(0)
    heatmaps = rng.random((6, 7, NUM_HEATMAPS)).astype(np.float32)
    pafs = rng.standard_normal((6, 7, NUM_PAFS)).astype(np.float32)
    back = inference.unflip_maps(*inference.unflip_maps(heatmaps, pafs))
    np.testing.assert_array_equal(back[0], heatmaps)
    np.testing.assert_array_equal(back[1], pafs)
    assert not np.array_equal(inference.unflip_maps(heatmaps, pafs)[0], heatmaps[:, ::-1])


def test_flip_maps_a_mirrored_image_back_exactly():
    rows, cols = 26, 23
    person = person_at(9.3, 11.4)
    person[[10, 11], 2] = 0  # asymmetric, so a wrong swap would show
    # In the mirror image the person's left side looks like a right side: joint j of the
    # mirrored person is joint FLIP_JOINTS[j] of the original, mirrored.
    mirrored = person[list(FLIP_JOINTS)].copy()
    mirrored[:, 0] = cols - 1 - mirrored[:, 0]
    heatmaps, pafs = draw_maps(person[None], rows, cols)
    back_heatmaps, back_pafs = inference.unflip_maps(*draw_maps(mirrored[None], rows, cols))
    np.testing.assert_allclose(back_heatmaps, heatmaps, atol=1e-6)
    np.testing.assert_allclose(back_pafs, pafs, atol=1e-6)


def test_people_to_aic_format():
    people = np.zeros((2, NUM_JOINTS, 3), dtype=np.float32)
    people[0, :, :] = (10.6, 20.4, 0.9)
    people[1, 13] = (5.2, 6.7, 0.5)
    result = parsing.people_to_aic(people)
    assert list(result) == ["human1", "human2"]
    assert all(len(values) == 42 for values in result.values())
    # Sub-pixel floats by default (float32 10.6 rounded to 2 decimals), v an int.
    assert result["human1"][:3] == [10.6, 20.4, 1]
    assert [type(v) for v in result["human1"][:3]] == [float, float, int]
    assert result["human2"][:39] == [0.0, 0.0, 0] * 13 and result["human2"][39:] == [5.2, 6.7, 1]
    assert all(type(v) is float for v in result["human2"][0:39:3])  # missing joints too
    integer = parsing.people_to_aic(people, integer=True)
    assert all(type(v) is int for values in integer.values() for v in values)
    assert integer["human1"][:3] == [11, 20, 1]
    assert integer["human2"][:39] == [0] * 39 and integer["human2"][39:] == [5, 7, 1]
    assert parsing.people_to_aic(np.zeros((0, NUM_JOINTS, 3))) == {}


def limb_candidate(passing_samples):
    """Peaks of the neck at (2, 5) and the head top at (11, 5), and PAFs of limb 0 (neck ->
    head top) that point along it on the first `passing_samples` of its 10 sample points
    (x = 2, 3, ..., 11, exactly on cells, so bilinear sampling reads the cells)."""
    peaks = parsing.Peaks(joint=np.array([12, 13]), xy=np.array([[11.0, 5.0], [2.0, 5.0]]),
                            score=np.ones(2, np.float32),
                            start=np.searchsorted([12, 13], np.arange(NUM_JOINTS + 1)))
    pafs = np.zeros((20, 14, NUM_PAFS), dtype=np.float32)  # 20 rows: no length penalty
    pafs[:, 2:2 + passing_samples, 0] = 1.0  # x component of limb 0
    return peaks, pafs


@pytest.mark.parametrize("passing, rule, accepted", [
    (8, "more_than", False), (9, "more_than", True), (8, "at_least", True), (7, "at_least", False),
])
def test_limb_acceptance_rules_count_samples_like_the_original(cfg, passing, rule, accepted):
    # 10 samples, paf_min_fraction 0.8: the original needs more than 8 (9 of 10).
    cfg.limb_acceptance, cfg.paf_threshold, cfg.paf_min_fraction = rule, 0.05, 0.8
    peaks, pafs = limb_candidate(passing)
    connections = parsing.score_limbs(peaks, pafs, cfg)
    assert (len(connections.limb) == 1) == accepted
    if accepted:  # the mean alignment: `passing` ones out of 10 samples, no length penalty
        assert connections.score[0] == pytest.approx(passing / 10)


def test_two_peaks_on_one_spot_are_not_joined_once_a_minimum_length_is_set(cfg):
    # A head top half a cell from the neck, the PAF along +x: the original joins any length
    # above zero; min_limb_length 1 (cells) does not, and keeps the 9-cell limb.
    peaks, pafs = limb_candidate(10)
    peaks.xy[0] = (2.5, 5.0)
    cfg.min_limb_length = 0.0
    assert len(parsing.score_limbs(peaks, pafs, cfg).limb) == 1
    cfg.min_limb_length = 1.0
    assert len(parsing.score_limbs(peaks, pafs, cfg).limb) == 0
    assert len(parsing.score_limbs(*limb_candidate(10), cfg).limb) == 1
    # The argument overrides the field: a 9-cell limb is not longer than 9 cells.
    assert len(parsing.score_limbs(*limb_candidate(10), cfg, min_length=9.0).limb) == 0
    assert len(parsing.score_limbs(*limb_candidate(10), cfg, min_length=8.9).limb) == 1


def test_an_unknown_limb_acceptance_rule_is_an_error(cfg):
    cfg.limb_acceptance = "most"
    with pytest.raises(ValueError, match="limb_acceptance"):
        parsing.score_limbs(*limb_candidate(9), cfg)


def test_grid_to_pixels_follows_the_grid_convention():
    # Cell (r, c) = (2, 3) is input pixel (3 * 8 + 3.5, 2 * 8 + 3.5); scale 0.5 doubles it.
    np.testing.assert_allclose(parsing.grid_to_pixels((3, 2), 8, (0.5, 0.5)), (55.0, 39.0))
    np.testing.assert_allclose(parsing.grid_to_pixels((3, 2), 8, (1, 1), (1.5, 0.5)),
                               (26.0, 19.0))


class BlockMeanModel:
    """Stands in for the network: every heatmap channel is the mean brightness of each
    stride x stride block of the input; the PAFs are zero."""

    def __init__(self, stride, heatmap_channels=NUM_HEATMAPS):
        self.stride, self.heatmap_channels = stride, heatmap_channels
        self.calls = []

    def __call__(self, batch, training=False):
        count, height, width, _ = batch.shape
        self.calls.append(batch.shape)
        s = self.stride
        blocks = (batch.mean(axis=3) / 255.0).reshape(count, height // s, s, width // s, s)
        blocks = blocks.mean(axis=(2, 4))
        heatmaps = np.repeat(blocks[..., None], self.heatmap_channels, axis=3)
        return [np.zeros(blocks.shape + (NUM_PAFS,), np.float32), heatmaps.astype(np.float32)]


def dot_image(x, y, height=48, width=72, sigma=4.0):
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    dot = np.exp(-((grid_x - x) ** 2 + (grid_y - y) ** 2) / (2 * sigma ** 2))
    return np.repeat((dot * 255)[..., None], 3, axis=2).astype(np.uint8)


def strongest_peak_in_pixels(heatmaps, mapping, cfg, joint=0):
    """The strongest peak of `joint` in original pixels, and the number of its peaks."""
    peaks = parsing.find_peaks(heatmaps, cfg, mapping["smoothing"])
    first, last = peaks.start[joint], peaks.start[joint + 1]
    best = first + int(np.argmax(peaks.score[first:last]))
    return parsing.grid_to_pixels(peaks.xy[best], mapping["stride"], mapping["scale"],
                                    mapping["offset"]), last - first


@pytest.mark.parametrize("scales, flip, upsample, grid", [
    ((1.0,), False, 1, (16, 24)),  # the network's own grid: 64 x 96 input pixels, stride 4
    ((1.0,), True, 2, (32, 48)),  # twice finer
    ((0.5, 1.0), True, 2, (32, 48)),  # the largest scale sets the grid
    ((1.0, 2.0), True, 2, (64, 96)),
    ((0.5, 1.0), True, 0, (48, 72)),  # the image's own pixels, as the original
])
def test_predict_maps_maps_peaks_back_to_original_pixels(cfg, scales, flip, upsample, grid):
    cfg.inference_height, cfg.scales, cfg.flip_test = 64, scales, flip
    cfg.peak_smoothing, cfg.fusion_upsample = 0.0, upsample
    model = BlockMeanModel(cfg.stride)
    heatmaps, pafs, mapping = inference.predict_maps(model, dot_image(37.3, 21.8), cfg)
    assert heatmaps.shape == grid + (NUM_HEATMAPS,) and pafs.shape == grid + (NUM_PAFS,)
    assert len(model.calls) == len(scales) and all(shape[0] == 1 + flip for shape in model.calls)
    found, count = strongest_peak_in_pixels(heatmaps, mapping, cfg)
    assert count == 1
    # The block means blur the dot a little differently at each scale; 0.4 px covers that.
    np.testing.assert_allclose(found, (37.3, 21.8), atol=0.4)


def test_resample_spreads_an_impulse_with_opencvs_cubic_kernel():
    # One scale's grid of 8 x 8 cells (stride 4, input = original) onto a fusion grid twice
    # finer (stride 2): fusion cell j is at pixel 2j + 0.5, i.e. network cell
    # (2j + 0.5 - 1.5) / 4 = (2j - 1) / 4. An impulse at cell 3 comes out as Keys' cubic kernel
    # with a = -0.75 at the distances 0.25 (j = 6, 7), 0.75 (j = 5, 8), 1.25 (j = 4, 9):
    # 1 - 1.9375 / 16 = 0.87890625, 1 - 1.3125 * 0.5625 = 0.26171875 and -0.10546875.
    grid = inference.FusionGrid((16, 16), 2.0, (1.0, 1.0))
    impulse = np.zeros((8, 8, 2), dtype=np.float32)
    impulse[3, 3] = (1.0, 2.0)
    out = inference.resample(impulse, grid, (1.0, 1.0), 4)
    assert out.shape == (16, 16, 2)
    kernel = [-0.10546875, 0.26171875, 0.87890625, 0.87890625, 0.26171875, -0.10546875]
    np.testing.assert_allclose(out[4:10, 7, 0], np.array(kernel) * 0.87890625, atol=1e-6)
    np.testing.assert_allclose(out[6, 4:10, 1], np.array(kernel) * 2 * 0.87890625, atol=1e-6)
    assert np.abs(out[:2]).max() == 0 and np.abs(out[12:]).max() == 0  # beyond the kernel
    # Past the last cell the border repeats: a constant map stays constant to the grid's end.
    np.testing.assert_allclose(inference.resample(np.ones((8, 8, 2), np.float32), grid,
                                                  (1.0, 1.0), 4), 1.0, atol=1e-6)
    # The same grid as the network's: the maps come back unchanged.
    same = inference.FusionGrid((8, 8), 4.0, (1.0, 1.0))
    np.testing.assert_allclose(inference.resample(impulse, same, (1.0, 1.0), 4), impulse,
                               atol=1e-6)


def test_fuse_scales_averages_heatmaps_and_pafs_apart_into_contiguous_maps(cfg):
    # Two scales of constant maps (1 and 3 on a stride-4 grid of the image, 2x the first's
    # grid for the second): their mean is 2 on every fusion cell, heatmaps and PAFs alike.
    grid = inference.FusionGrid((16, 12), 2.0, (1.0, 1.0))
    scales = [inference.ScaleMaps(np.full((8, 6, NUM_HEATMAPS), value, np.float32),
                                  np.full((8, 6, NUM_PAFS), -value, np.float32), (factor,) * 2)
              for value, factor in ((1.0, 1.0), (3.0, 2.0))]
    scales[1] = scales[1]._replace(heatmaps=np.full((16, 12, NUM_HEATMAPS), 3.0, np.float32),
                                   pafs=np.full((16, 12, NUM_PAFS), -3.0, np.float32))
    heatmaps, pafs = inference.fuse_scales(scales, grid, cfg)
    assert heatmaps.shape == (16, 12, NUM_HEATMAPS) and pafs.shape == (16, 12, NUM_PAFS)
    assert heatmaps.flags["C_CONTIGUOUS"] and pafs.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(heatmaps, 2.0, atol=1e-6)
    np.testing.assert_allclose(pafs, -2.0, atol=1e-6)
    # One scale is that scale's resampled maps themselves.
    alone, _ = inference.fuse_scales(scales[:1], grid, cfg)
    np.testing.assert_array_equal(alone, inference.resample(scales[0].heatmaps, grid,
                                                            (1.0, 1.0), cfg.stride))


@pytest.mark.parametrize("name, shrinking, flag", [
    ("area", True, cv2.INTER_AREA), ("area", False, cv2.INTER_CUBIC),
    ("cubic", True, cv2.INTER_CUBIC), ("linear", False, cv2.INTER_LINEAR)])
def test_input_interpolation_names_opencvs_flag(name, shrinking, flag):
    assert inference.resize_interpolation(name, shrinking) == flag


def test_an_unknown_input_interpolation_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="'lanczos': choose from area, cubic, linear"):
        inference.resize_interpolation("lanczos", True)


@pytest.mark.parametrize("interpolation", ["area", "cubic", "linear"])
def test_prepare_input_resizes_pads_and_swaps_a_bgr_frame(cfg, interpolation):
    # A 4 x 6 frame, BGR (10, 20, 30) on its left half and (50, 60, 70) on its right, halved
    # into 2 x 3 and padded to 2 x 4: area averages 2 x 2 blocks, so column 1 mixes the
    # halves; every method keeps the outer columns' colours; the padding is the grey.
    cfg.input_interpolation, cfg.pad_value = interpolation, 128
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:, :3], frame[:, 3:] = (10, 20, 30), (50, 60, 70)
    rgb = inference.prepare_input(frame, (2, 3), (2, 4), cfg, reverse_channels=True)
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb[:, 0], [[30, 20, 10]] * 2)
    np.testing.assert_array_equal(rgb[:, 2], [[70, 60, 50]] * 2)
    np.testing.assert_array_equal(rgb[:, 3], 128)
    if interpolation == "area":
        np.testing.assert_array_equal(rgb[:, 1], [[50, 40, 30]] * 2)
    bgr = inference.prepare_input(frame, (2, 3), (2, 4), cfg)
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])


def test_fusion_grid_and_mapping_by_hand(cfg):
    cfg.inference_height, cfg.scales, cfg.peak_smoothing = 160, (1.0, 1.5, 2.0), 0.5
    grid = inference.fusion_grid(400, 300, cfg)  # 2x: 320 x 240 input pixels, stride 4 / 2
    assert grid.shape == (160, 120) and grid.stride == 2.0 and grid.factors == (0.8, 0.8)
    mapping = inference.grid_mapping(grid, 400, cfg)
    # A 1x cell is 4 * 400 / 160 = 10 image pixels, a fused cell 2 / 0.8 = 2.5: 0.5 1x cells
    # of smoothing are 2 fused cells. Fused cell 0 is at input pixel 0.5, image pixel 0.75.
    assert mapping["smoothing"] == pytest.approx(2.0)
    cfg.min_limb_length = 1.0  # one 1x cell is 4 fused cells
    assert inference.grid_mapping(grid, 400, cfg)["min_limb_length"] == pytest.approx(4.0)
    np.testing.assert_allclose(parsing.grid_to_pixels(
        (0, 0), mapping["stride"], mapping["scale"], mapping["offset"]), (0.75, 0.75))
    cfg.fusion_upsample = 0
    image_grid = inference.fusion_grid(400, 300, cfg)
    assert image_grid == inference.FusionGrid((400, 300), 1.0, (1.0, 1.0))
    assert inference.grid_mapping(image_grid, 400, cfg)["smoothing"] == pytest.approx(5.0)


def test_flip_test_with_a_mirror_symmetric_model_changes_nothing(cfg):
    cfg.inference_height, cfg.scales = 64, (1.0,)
    image = dot_image(30.2, 17.5, width=70)  # 93 columns: padded, so the mirror is not trivial
    plain = inference.predict_maps(BlockMeanModel(cfg.stride), image, cfg)
    cfg.flip_test = True
    flipped = inference.predict_maps(BlockMeanModel(cfg.stride), image, cfg)
    np.testing.assert_allclose(flipped[0], plain[0], atol=1e-6)


def test_frames_of_one_width_bucket_share_model_calls(cfg):
    # 48 high frames, 72 and 60 wide: 96 and 80 input columns at 64 rows; both pad to 96 with
    # 32-pixel buckets (one call of 3 inputs), not with the stride's 4 (two calls).
    cfg.inference_height, cfg.scales, cfg.flip_test = 64, (1.0,), False
    frames = [dot_image(20, 20), dot_image(40, 30), dot_image(20, 20, width=60)]
    model = BlockMeanModel(cfg.stride)
    results = inference.estimate_poses_batch(model, frames, cfg)
    assert len(results) == 3 and model.calls == [(3, 64, 96, 3)]
    people, scores = results[0]
    assert people.shape == (0, NUM_JOINTS, 3) and scores.shape == (0,)  # no PAFs, no limbs
    cfg.input_bucket = cfg.stride
    model = BlockMeanModel(cfg.stride)
    inference.estimate_poses_batch(model, frames, cfg)
    assert sorted(model.calls) == [(1, 64, 80, 3), (2, 64, 96, 3)]


class PatternModel:
    """A deterministic stand-in whose maps have many peaks and limbs: every output channel is
    a fixed mix of the stride x stride block means of the input's three colours."""

    def __init__(self, stride, seed=0):
        rng = np.random.default_rng(seed)
        self.stride = stride
        self.mix = rng.standard_normal((3, NUM_HEATMAPS + NUM_PAFS)).astype(np.float32)

    def __call__(self, batch, training=False):
        count, height, width, _ = batch.shape
        s = self.stride
        blocks = (batch / 255.0).reshape(count, height // s, s, width // s, s, 3)
        mixed = blocks.mean(axis=(2, 4)) @ self.mix
        return [mixed[..., NUM_HEATMAPS:], np.abs(mixed[..., :NUM_HEATMAPS])]


def random_images(count, seed=0):
    """Smooth random RGB images of assorted sizes."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        height, width = rng.integers(30, 90, size=2)
        small = rng.integers(0, 255, (height // 6 + 1, width // 6 + 1, 3)).astype(np.uint8)
        images.append(cv2.resize(small, (int(width), int(height)),
                                 interpolation=cv2.INTER_CUBIC))
    return images


def test_the_batched_stream_equals_the_one_at_a_time_path(cfg):
    cfg.inference_height, cfg.scales, cfg.flip_test = 48, (1.0, 1.5), True
    cfg.inference_batch, cfg.peak_threshold, cfg.paf_threshold = 4, 0.3, -1.0
    cfg.min_parts, cfg.min_person_score = 3, -10.0
    model, images = PatternModel(cfg.stride), random_images(7)
    one_at_a_time = [inference.estimate_poses(model, image, cfg) for image in images]
    stream = list(inference.estimate_poses_stream(model, enumerate(images), cfg, chunk_size=3,
                                                  workers=2))
    assert [key for key, _ in stream] == list(range(7))
    assert sum(len(people) for people, _ in one_at_a_time) >= 7  # people to compare
    for (people, scores), (_, estimate) in zip(one_at_a_time, stream):
        np.testing.assert_array_equal(estimate.people, people)
        np.testing.assert_array_equal(estimate.scores, scores)


class StreamedPatternModel(PatternModel):
    """PatternModel as a runtime with two streams: it counts how many calls overlap."""

    streams = 2

    def __init__(self, stride):
        super().__init__(stride)
        self.lock, self.running, self.most_at_once = threading.Lock(), 0, 0

    def __call__(self, batch, training=False):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.02)  # Long enough for the next chunk's call to start meanwhile.
        try:
            return super().__call__(batch, training)
        finally:
            with self.lock:
                self.running -= 1


def test_a_runtime_with_two_streams_runs_two_chunks_at_once_with_the_same_results(cfg):
    cfg.inference_height, cfg.scales, cfg.flip_test = 48, (1.0,), False
    cfg.peak_threshold, cfg.paf_threshold, cfg.min_parts, cfg.min_person_score = \
        0.3, -1.0, 3, -10.0
    images = random_images(9, seed=2)
    streamed = StreamedPatternModel(cfg.stride)
    stream = list(inference.estimate_poses_stream(streamed, enumerate(images), cfg,
                                                  chunk_size=2))
    one_stream = list(inference.estimate_poses_stream(PatternModel(cfg.stride),
                                                      enumerate(images), cfg, chunk_size=2))
    assert streamed.most_at_once == 2
    assert [key for key, _ in stream] == list(range(9))  # in order, though computed two at once
    assert sum(len(estimate.people) for _, estimate in one_stream) >= 9
    for (_, got), (_, want) in zip(stream, one_stream):
        np.testing.assert_array_equal(got.people, want.people)
        np.testing.assert_array_equal(got.scores, want.scores)


def test_a_model_with_other_channel_counts_is_reported(cfg):
    cfg.inference_height, cfg.scales = 64, (1.0,)
    with pytest.raises(ValueError, match="another configuration"):
        inference.predict_maps(BlockMeanModel(cfg.stride, heatmap_channels=19),
                               dot_image(20, 20), cfg)
