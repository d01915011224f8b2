"""Tests of inference.py on hand-built maps (Gaussian blobs and constant PAF strips).

Maps are built here in grid units and parsed with stride 1 and scale 1, so the people come back
in the same coordinates as the skeletons placed on the grid.
"""

import copy

import numpy as np
import pytest

import config
import inference
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
    return inference.parse_poses(heatmaps, pafs, cfg, stride=1)


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
    peaks = inference.find_peaks(gaussian_map(x, y), cfg)
    assert peaks.joint.tolist() == [4]
    assert peaks.start[4] == 0 and peaks.start[5] == 1
    assert np.abs(peaks.xy[0] - (x, y)).max() < tolerance
    assert peaks.score[0] == pytest.approx(
        np.exp(-((round(x) - x) ** 2 + (round(y) - y) ** 2) / (2 * 0.875 ** 2)), rel=1e-5)


def test_a_gaussian_exactly_between_two_cells_gives_one_peak(cfg):
    cfg.peak_smoothing = 0.0
    peaks = inference.find_peaks(gaussian_map(5.5, 7.0), cfg)
    assert len(peaks.joint) == 1
    assert np.abs(peaks.xy[0] - (5.5, 7.0)).max() < 1e-3


def test_greedy_and_optimal_matching_keep_each_peak_once_per_limb(cfg):
    expected = np.stack([person_at(10.3, 11.4), person_at(18.7, 11.6)])
    heatmaps, pafs = draw_maps(expected, 26, 30)
    peaks = inference.find_peaks(heatmaps, cfg)
    candidates = inference.score_limbs(peaks, pafs, cfg)
    for method in ("greedy", "optimal"):
        matched = inference.match_limbs(candidates, peaks, method)
        for limb in range(len(LIMBS)):
            chosen = matched.limb == limb
            assert len(set(matched.index_a[chosen])) == chosen.sum()
            assert len(set(matched.index_b[chosen])) == chosen.sum()
        assert len(matched.limb) == 2 * len(LIMBS)
    with pytest.raises(ValueError, match="limb_matching"):
        inference.match_limbs(candidates, peaks, "best")


def test_optimal_matching_untangles_forearms_that_fool_greedy_matching(cfg):
    # Two left forearms that overlap (taken from a real AIC annotation): where the strips
    # overlap the field is the average, so the wrong pair elbow 0 -> wrist 1 scores best.
    people = np.zeros((2, NUM_JOINTS, 3))
    people[0, 4], people[0, 5] = (13.06, 10.62, 1), (10.56, 6.87, 1)
    people[1, 4], people[1, 5] = (8.27, 9.23, 1), (12.09, 8.88, 1)
    heatmaps, pafs = draw_maps(people, 16, 18)
    cfg.peak_smoothing = 0.0
    peaks = inference.find_peaks(heatmaps, cfg)
    candidates = inference.score_limbs(peaks, pafs, cfg)

    def pairs(method):
        matched = inference.match_limbs(candidates, peaks, method)
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
    result = inference.people_to_aic(people)
    assert list(result) == ["human1", "human2"]
    assert all(len(values) == 42 and all(type(v) is int for v in values)
               for values in result.values())
    assert result["human1"][:3] == [11, 20, 1]
    assert result["human2"][:39] == [0] * 39 and result["human2"][39:] == [5, 7, 1]
    assert inference.people_to_aic(np.zeros((0, NUM_JOINTS, 3))) == {}


def test_grid_to_pixels_follows_the_grid_convention():
    # Cell (r, c) = (2, 3) is input pixel (3 * 8 + 3.5, 2 * 8 + 3.5); scale 0.5 doubles it.
    np.testing.assert_allclose(inference.grid_to_pixels((3, 2), 8, (0.5, 0.5)), (55.0, 39.0))
    np.testing.assert_allclose(inference.grid_to_pixels((3, 2), 8, (1, 1), (1.5, 0.5)),
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


@pytest.mark.parametrize("scales, flip", [((1.0,), False), ((1.0,), True), ((0.5, 1.0), True)])
def test_predict_maps_maps_peaks_back_to_original_pixels(cfg, scales, flip):
    cfg.inference_height, cfg.scales, cfg.flip_test = 64, scales, flip
    cfg.peak_smoothing = 0.0
    model = BlockMeanModel(cfg.stride)
    heatmaps, pafs, mapping = inference.predict_maps(model, dot_image(37.3, 21.8), cfg)
    assert heatmaps.shape == (16, 24, NUM_HEATMAPS) and pafs.shape == (16, 24, NUM_PAFS)
    assert len(model.calls) == len(scales) and all(shape[0] == 1 + flip for shape in model.calls)
    peaks = inference.find_peaks(heatmaps, cfg)
    at_joint = peaks.start[0], peaks.start[1]
    assert at_joint[1] - at_joint[0] == 1
    found = inference.grid_to_pixels(peaks.xy[at_joint[0]], **mapping)
    np.testing.assert_allclose(found, (37.3, 21.8), atol=1.0)


def test_flip_test_with_a_mirror_symmetric_model_changes_nothing(cfg):
    cfg.inference_height, cfg.scales = 64, (1.0,)
    image = dot_image(30.2, 17.5, width=70)  # 93 columns: padded, so the mirror is not trivial
    plain = inference.predict_maps(BlockMeanModel(cfg.stride), image, cfg)
    cfg.flip_test = True
    flipped = inference.predict_maps(BlockMeanModel(cfg.stride), image, cfg)
    np.testing.assert_allclose(flipped[0], plain[0], atol=1e-6)


def test_batches_of_frames_share_model_calls_and_estimate_poses_runs(cfg):
    cfg.inference_height, cfg.scales = 64, (1.0,)
    model = BlockMeanModel(cfg.stride)
    frames = [dot_image(20, 20), dot_image(40, 30), dot_image(20, 20, width=60)]
    results = inference.estimate_poses_batch(model, frames, cfg)
    assert len(results) == 3 and len(model.calls) == 2  # one call per distinct frame size
    people, scores = results[0]
    assert people.shape == (0, NUM_JOINTS, 3) and scores.shape == (0,)  # no PAFs, no limbs


def test_a_model_with_other_channel_counts_is_reported(cfg):
    cfg.inference_height, cfg.scales = 64, (1.0,)
    with pytest.raises(ValueError, match="another configuration"):
        inference.predict_maps(BlockMeanModel(cfg.stride, heatmap_channels=19),
                               dot_image(20, 20), cfg)
