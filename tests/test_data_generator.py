"""Tests for data_generator.py: hand-computed targets, augmentation geometry, the tf.data
pipeline and bad input. Small grids and a tiny Config keep the whole file fast."""

import collections
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import config
import data_generator as dg
import dataset

J = config.NUM_JOINTS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def people(*joint_lists):
    """Keypoints (P, 14, 3), all unlabelled except the given {joint: (x, y[, v])} per person."""
    keypoints = np.zeros((len(joint_lists), J, 3))
    keypoints[:, :, 2] = config.UNLABELLED
    for person, joints in enumerate(joint_lists):
        for joint, value in joints.items():
            keypoints[person, joint] = (value[0], value[1], value[2] if len(value) > 2 else 1)
    return keypoints


def cell_pixel(row, col, stride):
    """The input pixel (x, y) that grid cell (row, col) stands for."""
    return col * stride + (stride - 1) / 2, row * stride + (stride - 1) / 2


def tiny_cfg(**overrides):
    return config.make_config("tiny", **overrides)


# ------------------------------------------------------------------------------ heatmaps
def test_single_keypoint_peak_and_neighbours():
    stride, sigma = 4, 3.0
    x, y = cell_pixel(3, 5, stride)
    heatmaps, pafs = dg.render_targets(people({7: (x, y)}), (8, 10), stride, sigma, 1.0)
    assert heatmaps.shape == (8, 10, 15) and heatmaps.dtype == np.float32
    assert heatmaps[3, 5, 7] == pytest.approx(1.0)
    assert np.unravel_index(heatmaps[:, :, 7].argmax(), (8, 10)) == (3, 5)
    # One cell right is `stride` pixels away; one diagonal step is stride * sqrt(2).
    assert heatmaps[3, 6, 7] == pytest.approx(math.exp(-stride**2 / (2 * sigma**2)), rel=1e-6)
    assert heatmaps[4, 6, 7] == pytest.approx(math.exp(-2 * stride**2 / (2 * sigma**2)), rel=1e-6)
    assert heatmaps[:, :, :7].max() == 0 and heatmaps[:, :, 8:J].max() == 0
    np.testing.assert_allclose(heatmaps[:, :, -1], 1 - heatmaps[:, :, 7], atol=1e-7)
    assert pafs.shape == (8, 10, 30) and not pafs.any()


def test_two_people_combine_by_max_not_sum():
    stride, sigma = 4, 4.0
    first, second = cell_pixel(2, 2, stride), cell_pixel(2, 4, stride)
    heatmaps, _ = dg.render_targets(people({0: first}, {0: second}), (6, 7), stride, sigma, 1.0)
    # Cell (2, 3) lies one cell (4 px) from both peaks: max gives exp(-16/32), a sum twice that.
    assert heatmaps[2, 3, 0] == pytest.approx(math.exp(-16 / 32), rel=1e-6)
    assert heatmaps[2, 2, 0] == pytest.approx(1.0)
    # At a peak the other person's Gaussian (8 px away) is not added either.
    assert heatmaps[2, 4, 0] == pytest.approx(1.0)


def test_background_is_one_minus_max_over_joints():
    stride, sigma = 4, 2.0
    heatmaps, _ = dg.render_targets(
        people({0: cell_pixel(1, 1, stride), 5: cell_pixel(1, 2, stride)}), (4, 4), stride, sigma,
        1.0)
    expected = 1 - np.maximum(heatmaps[:, :, 0], heatmaps[:, :, 5])
    np.testing.assert_allclose(heatmaps[:, :, -1], expected, atol=1e-7)
    assert heatmaps[1, 1, -1] == pytest.approx(0.0, abs=1e-7)
    assert heatmaps[3, 3, -1] > 0.99


def test_no_people_gives_zero_maps_and_full_background():
    heatmaps, pafs = dg.render_targets(np.zeros((0, J, 3)), (5, 6), 8, 7.0, 1.0)
    assert not heatmaps[:, :, :J].any() and (heatmaps[:, :, -1] == 1).all() and not pafs.any()


# ------------------------------------------------------------------------------ PAFs
def limb_channels(limb):
    return 2 * config.LIMBS.index(limb), 2 * config.LIMBS.index(limb) + 1


def test_horizontal_limb_is_unit_x_along_it_and_zero_beside():
    stride = 4
    neck, head = cell_pixel(4, 1, stride), cell_pixel(4, 6, stride)
    _, pafs = dg.render_targets(people({13: neck, 12: head}), (9, 9), stride, 2.0, 1.0)
    cx, cy = limb_channels((13, 12))
    for row in (3, 4, 5):  # on the line and one cell either side (distance 1 = paf_width)
        np.testing.assert_allclose(pafs[row, 1:7, cx], 1.0)
        np.testing.assert_allclose(pafs[row, 1:7, cy], 0.0)
    assert not pafs[[0, 1, 2, 6, 7, 8], :, cx].any()  # beside it
    assert not pafs[:, [0, 7, 8], cx].any()  # beyond its ends
    other = np.delete(np.arange(30), [cx, cy])
    assert not pafs[:, :, other].any()
    _, narrow = dg.render_targets(people({13: neck, 12: head}), (9, 9), stride, 2.0, 0.5)
    assert narrow[4, 1:7, cx].min() == 1.0 and not narrow[[3, 5], :, cx].any()


def test_vertical_limb_points_down_the_image():
    stride = 8
    shoulder, elbow = cell_pixel(1, 3, stride), cell_pixel(5, 3, stride)
    _, pafs = dg.render_targets(people({0: shoulder, 1: elbow}), (7, 7), stride, 7.0, 1.0)
    cx, cy = limb_channels((0, 1))
    np.testing.assert_allclose(pafs[1:6, 2:5, cy], 1.0)
    np.testing.assert_allclose(pafs[1:6, 2:5, cx], 0.0, atol=1e-7)
    assert not pafs[:, [0, 1, 5, 6], cy].any() and not pafs[[0, 6], :, cy].any()


def test_overlapping_limbs_are_averaged_over_people():
    stride = 4
    horizontal = people({13: cell_pixel(4, 1, stride), 12: cell_pixel(4, 7, stride)})
    vertical = people({13: cell_pixel(1, 4, stride), 12: cell_pixel(7, 4, stride)})
    _, pafs = dg.render_targets(np.concatenate([horizontal, vertical, horizontal]), (9, 9),
                                stride, 2.0, 0.5)
    cx, cy = limb_channels((13, 12))
    # Where all three overlap: (1 + 0 + 1) / 3 and (0 + 1 + 0) / 3.
    assert pafs[4, 4, cx] == pytest.approx(2 / 3) and pafs[4, 4, cy] == pytest.approx(1 / 3)
    # Two identical limbs average to the unit vector, not twice it.
    assert tuple(pafs[4, 2, [cx, cy]]) == (1.0, 0.0)
    assert tuple(pafs[2, 4, [cx, cy]]) == (0.0, 1.0)


def test_zero_length_limb_and_unlabelled_joints_make_nothing():
    stride = 4
    point = cell_pixel(3, 3, stride)
    heatmaps, pafs = dg.render_targets(people({13: point, 12: point}), (7, 7), stride, 2.0, 1.0)
    assert not pafs.any() and heatmaps[3, 3, 13] == pytest.approx(1.0)
    unlabelled = people({13: point + (3,), 12: cell_pixel(3, 6, stride) + (3,)})
    heatmaps, pafs = dg.render_targets(unlabelled, (7, 7), stride, 2.0, 1.0)
    assert not pafs.any() and not heatmaps[:, :, :J].any()
    occluded = people({13: point + (2,), 12: cell_pixel(3, 6, stride) + (2,)})
    heatmaps, pafs = dg.render_targets(occluded, (7, 7), stride, 2.0, 1.0)
    assert pafs.any() and heatmaps[3, 3, 13] == pytest.approx(1.0)


def hostile_keypoints():
    """(6, 14, 3) keypoints with NaN and infinite coordinates, far-away and duplicate joints."""
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(-50, 100, size=(6, J, 3))
    keypoints[..., 2] = rng.integers(1, 4, size=(6, J))
    keypoints[0, :5, :2] = np.nan
    keypoints[0, 5:8, 0] = np.inf
    keypoints[1, :, :2] = 1e30  # far outside, and all duplicates of each other
    keypoints[2, :, :2] = (10.0, 10.0)  # every joint on one spot
    keypoints[:3, :, 2] = 1
    return keypoints


def test_targets_are_finite_for_hostile_keypoints():
    heatmaps, pafs = dg.render_targets(hostile_keypoints(), (12, 11), 8, 7.0, 1.0)
    assert np.isfinite(heatmaps).all() and np.isfinite(pafs).all()
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert np.abs(pafs).max() <= 1 + 1e-6 and pafs.any()


# ------------------------------------------------------------------------------ augmentation
def dot_image(width, height, x, y, radius=3):
    """A dark image with a bright round dot centred on pixel (x, y) (integers)."""
    image = np.full((height, width, 3), 40, np.uint8)
    cv2.circle(image, (int(x), int(y)), radius, (255, 255, 255), -1)
    return cv2.GaussianBlur(image, (0, 0), 1.5)


def bright_centroid(image):
    grey = image.astype(np.float64).mean(axis=2)
    weights = np.clip(grey - 0.6 * grey.max(), 0, None)
    rows, cols = np.indices(grey.shape)
    return (cols * weights).sum() / weights.sum(), (rows * weights).sum() / weights.sum()


@pytest.mark.parametrize("name, seed", [("dot.jpg", 0), ("dot.jpg", 1), ("dot.jpg", 2),
                                        ("dot.png", 3)])
def test_keypoint_follows_the_image_through_the_warp(tmp_path, name, seed):
    # A large image and a big person, so the scale is below 1/4: the JPEG is decoded at reduced
    # size, the PNG at full size; the dot must land on the transformed keypoint either way.
    width, height, x, y = 900, 700, 431.0, 302.0
    path = str(tmp_path / name)
    cv2.imwrite(path, dot_image(width, height, x, y, radius=15), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cfg = tiny_cfg(input_size=96, stride=4, max_rotation=40, scale_min=0.5, scale_max=1.5,
                   center_jitter=8, flip_probability=0.5, color_jitter=0.0, pad_value=0)
    keypoints = people({0: (x, y)})
    boxes = np.array([[x - 150, y - 200, x + 150, y + 200]])
    sample = dg.make_sample(cfg, path, (width, height), keypoints, boxes, True,
                            np.random.default_rng(seed))
    joint = 3 if sample["keypoints"][0, 3, 2] == 1 else 0  # a flip turns joint 0 into 3
    assert sample["keypoints"][0, joint, 2] == 1
    assert sample["keypoints"][0, 3 - joint, 2] == config.UNLABELLED
    found = bright_centroid(sample["image"])
    assert np.hypot(*(np.array(found) - sample["keypoints"][0, joint, :2])) < 1.0
    peak = np.unravel_index(sample["heatmaps"][:, :, joint].argmax(), (24, 24))
    assert np.hypot(*(np.array(cell_pixel(*peak, 4))[::-1] - np.array(found)[::-1])) < 4


def test_flip_mirrors_and_swaps_left_and_right():
    cfg = tiny_cfg(input_size=64, max_rotation=0, center_jitter=0, scale_min=1, scale_max=1,
                   flip_probability=1.0, target_person_height=0.5)
    keypoints = people({0: (40, 50), 3: (60, 50), 12: (50, 20)})
    boxes = np.array([[30.0, 20.0, 70.0, 84.0]])
    matrix, flipped = dg.training_transform(cfg, keypoints, boxes, 100, 100,
                                            np.random.default_rng(0))
    assert flipped
    moved = dg.transform_keypoints(keypoints, matrix, flipped)
    # The right shoulder (image-left, x=40) becomes the left shoulder on the image's right side.
    assert moved[0, 3, 0] > moved[0, 0, 0]
    centre = (cfg.input_size - 1) / 2
    scale = 0.5 * 64 / 64  # the 64-px-high person becomes half of the 64-px crop
    assert moved[0, 3, 0] == pytest.approx(centre + scale * 10)
    assert moved[0, 0, 0] == pytest.approx(centre - scale * 10)
    assert moved[0, 12, 0] == pytest.approx(centre) and moved[0, 12, 2] == 1


def test_points_leaving_the_crop_keep_their_label_and_position():
    cfg = tiny_cfg(input_size=32, max_rotation=0, center_jitter=0, scale_min=1, scale_max=1,
                   flip_probability=0.0)
    keypoints = people({13: (50, 50), 12: (50, 40), 8: (400, 50, 2)})
    boxes = np.array([[40.0, 35.0, 60.0, 65.0]])
    matrix, flipped = dg.training_transform(cfg, keypoints, boxes, 500, 100,
                                            np.random.default_rng(0))
    moved = dg.transform_keypoints(keypoints, matrix, flipped)
    expected = matrix[:2, :2] @ np.array([400.0, 50.0]) + matrix[:2, 2]
    assert moved[0, 8, 2] == 2 and moved[0, 8, 0] > 31
    np.testing.assert_allclose(moved[0, 8, :2], expected)
    assert moved[0, 13, 2] == 1 and 0 <= moved[0, 13, 0] <= 31
    assert moved[0, 0].tolist() == [0.0, 0.0, config.UNLABELLED]


def test_joint_just_outside_the_crop_lights_the_edge_cell_with_its_tail():
    # Grid 6 x 6 at stride 4: the last column's cells sit at x = 5 * 4 + 1.5 = 21.5. A joint
    # 3 px right of the crop's edge pixel 23 is at x = 26, 4.5 px from that column.
    stride, sigma = 4, 2.0
    joint = (26.0, cell_pixel(2, 5, stride)[1])
    heatmaps, _ = dg.render_targets(people({13: joint}), (6, 6), stride, sigma, 1.0)
    assert heatmaps[2, 5, 13] == pytest.approx(np.exp(-4.5 ** 2 / (2 * sigma ** 2)), rel=1e-6)
    assert heatmaps[2, 4, 13] == pytest.approx(np.exp(-8.5 ** 2 / (2 * sigma ** 2)), rel=1e-5)
    assert heatmaps[2, 5, J] == pytest.approx(1 - heatmaps[2, 5, 13])


def test_limb_from_inside_to_outside_the_crop_has_unit_vectors_on_its_inside_cells():
    stride = 4
    neck = cell_pixel(3, 2, stride)  # inside, row 3 column 2
    head = (cell_pixel(3, 2, stride)[0] + 40 * stride, neck[1])  # 40 cells to the right
    _, pafs = dg.render_targets(people({13: neck, 12: head}), (7, 7), stride, 2.0, 0.5)
    cx, cy = limb_channels((13, 12))
    np.testing.assert_allclose(pafs[3, 2:, cx], 1.0)  # from the neck to the crop's edge
    np.testing.assert_allclose(pafs[3, 2:, cy], 0.0, atol=1e-7)
    assert not pafs[3, :2, cx].any() and not pafs[[0, 1, 2, 4, 5, 6], :, cx].any()
    # Both ends outside, the limb crossing the crop: still drawn on the cells it crosses.
    left, right = (-30.0, neck[1]), (200.0, neck[1])
    _, crossing = dg.render_targets(people({13: left, 12: right}), (7, 7), stride, 2.0, 0.5)
    np.testing.assert_allclose(crossing[3, :, cx], 1.0)


def test_mask_zeroes_padding_and_unannotated_people():
    cfg = tiny_cfg(input_size=32, stride=4)
    # A 200 x 50 image letterboxed into 32 x 32 fills rows 0..7 of 32; the rest is padding.
    matrix, new_size = dg.letterbox_transform(cfg, 200, 50)
    assert new_size == (32, 8)
    mask = dg.loss_mask(matrix, 200, 50, (8, 8), 4, np.zeros((0, 4)))
    assert mask.shape == (8, 8, 1)
    assert mask[:2].min() == 1 and mask[2:].max() == 0
    # The original (and the paper preset) lets the loss see the padding.
    assert dg.loss_mask(matrix, 200, 50, (8, 8), 4, np.zeros((0, 4)), False).min() == 1
    assert not config.Config().ignore_padding and config.make_config("cpu").ignore_padding
    # A person with a box and no labelled joint is masked inside that box only.
    keypoints = np.concatenate([people({0: (10, 10)}), people({})])
    boxes = np.array([[0, 0, 20, 20], [100, 0, 150, 5e30]], dtype=float)
    hidden = dg.unannotated_boxes(keypoints, boxes, 200, 50)
    assert hidden.tolist() == [[100, 0, 150, 50]]  # clipped to the image
    mask = dg.loss_mask(matrix, 200, 50, (8, 8), 4, hidden)
    assert mask[0, 0, 0] == 1 and mask[0, 5, 0] == 0 and mask[1, 4, 0] == 0


def test_training_mask_is_zero_exactly_on_padding(tmp_path):
    path = str(tmp_path / "white.png")
    cv2.imwrite(path, np.full((120, 90, 3), 255, np.uint8))
    cfg = tiny_cfg(input_size=64, stride=4, pad_value=0, color_jitter=0.0, scale_min=0.3,
                   scale_max=0.6, max_rotation=40)
    keypoints = people({13: (45, 40)})
    boxes = np.array([[20.0, 10.0, 70.0, 110.0]])
    checked = 0
    for seed in range(4):
        sample = dg.make_sample(cfg, path, (90, 120), keypoints, boxes, True,
                                np.random.default_rng(seed))
        red = sample["image"][:, :, 0].astype(float)
        # Cell (r, c) stands for pixel (4c + 1.5, 4r + 1.5): the mean of 4 pixels around it.
        centres = (red[1::4, 1::4] + red[2::4, 1::4] + red[1::4, 2::4] + red[2::4, 2::4]) / 4
        mask = sample["mask"][:, :, 0]
        assert mask.min() == 0 and mask.max() == 1  # some padding and some picture
        assert (mask[centres > 200] == 1).all() and (mask[centres < 50] == 0).all()
        checked += (centres > 200).sum() + (centres < 50).sum()
    assert checked > 0.9 * 4 * 16 * 16


def test_validation_letterbox_is_deterministic_and_exact(tmp_path):
    cfg = tiny_cfg(input_size=32)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, dot_image(64, 40, 20, 10))
    keypoints = people({5: (20, 10)})
    first = dg.make_sample(cfg, path, (64, 40), keypoints, np.full((1, 4), np.nan), False, None)
    again = dg.make_sample(cfg, path, (64, 40), keypoints, np.full((1, 4), np.nan), False, None)
    assert all(np.array_equal(first[key], again[key]) for key in first)
    # Scale 1/2 with cv2.resize's pixel-centre convention: x' = (x + 0.5) / 2 - 0.5.
    assert first["keypoints"][0, 5, :2].tolist() == [9.75, 4.75]
    assert (first["image"][20:] == cfg.pad_value).all()
    assert first["mask"][:5].min() == 1 and first["mask"][5:].max() == 0


# ------------------------------------------------------------------------------ tf.data
def write_dataset(tmp_path, entries, split="train"):
    """Write images and a records file; entries are (name, image or raw bytes or None, people,
    (width, height)). Returns a tiny cfg pointing at them."""
    data_dir, records_dir = tmp_path / "data", tmp_path / "records"
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    records_dir.mkdir(exist_ok=True)
    lines = []
    for name, image, persons, size in entries:
        relative = f"images/{name}"
        if isinstance(image, bytes):
            (data_dir / relative).write_bytes(image)
        elif image is not None:
            cv2.imwrite(str(data_dir / relative), image)
        lines.append(json.dumps({"image_id": name.split(".")[0], "image_path": relative,
                                 "width": size[0], "height": size[1], "people": persons}))
    (records_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return tiny_cfg(data_dir=str(data_dir), records_dir=str(records_dir))


def person_record(points, box=None):
    keypoints = np.zeros((J, 3))
    keypoints[:, 2] = config.UNLABELLED
    for joint, (x, y) in points.items():
        keypoints[joint] = (x, y, 1)
    record = {"name": "human1", "keypoints": keypoints.tolist()}
    if box is not None:
        record["box"] = box
    return record


def standing_person(x, y, height):
    """A rough standing skeleton with its head top at (x, y)."""
    offsets = {12: (0, 0), 13: (0, .17), 0: (-.12, .2), 3: (.12, .2), 1: (-.15, .35),
               4: (.15, .35), 2: (-.16, .5), 5: (.16, .5), 6: (-.07, .52), 9: (.07, .52),
               7: (-.08, .75), 10: (.08, .75), 8: (-.08, .98), 11: (.08, .98)}
    points = {j: (x + dx * height, y + dy * height) for j, (dx, dy) in offsets.items()}
    return person_record(points, [x - .2 * height, y, x + .2 * height, y + height])


def good_entries(count):
    rng = np.random.default_rng(1)
    entries = []
    for number in range(count):
        image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        entries.append((f"im{number}.jpg", image, [standing_person(40, 5, 50)], (80, 60)))
    return entries


def batches(dataset, count):
    return [(images.numpy(), {k: v.numpy() for k, v in targets.items()})
            for images, targets in dataset.take(count)]


def test_make_dataset_shapes_dtypes_and_values(tmp_path):
    cfg = write_dataset(tmp_path, good_entries(5))
    batch_data = dataset.make_dataset(cfg, "train", True)
    images, targets = batch_data.element_spec
    assert tuple(images.shape) == (2, 32, 32, 3) and images.dtype.name == "uint8"
    assert tuple(targets["heatmaps"].shape) == (2, 8, 8, 15)
    assert tuple(targets["pafs"].shape) == (2, 8, 8, 30)
    assert tuple(targets["mask"].shape) == (2, 8, 8, 1)
    drawn = batches(batch_data, 4)  # more samples than records: the training set repeats
    for images, targets in drawn:
        assert images.min() >= 0 and images.max() <= 255
        assert all(np.isfinite(value).all() for value in targets.values())
        assert targets["heatmaps"][..., :J].max() > 0.5
    assert not np.array_equal(drawn[0][0], drawn[1][0])


def test_validation_is_deterministic_single_pass_and_shards(tmp_path):
    cfg = write_dataset(tmp_path, good_entries(5), split="val")
    first = batches(dataset.make_dataset(cfg, "val", False), 10)
    again = batches(dataset.make_dataset(cfg, "val", False), 10)
    assert [len(images) for images, _ in first] == [2, 2, 1]
    for (a, ta), (b, tb) in zip(first, again):
        assert np.array_equal(a, b) and all(np.array_equal(ta[k], tb[k]) for k in ta)
    shards = [batches(dataset.make_dataset(cfg, "val", False, shard=(2, i)), 10) for i in (0, 1)]
    sizes = [sum(len(images) for images, _ in shard) for shard in shards]
    assert sizes == [3, 2]
    everything = np.concatenate([images for images, _ in first])
    assert np.array_equal(shards[1][0][0][0], everything[1])  # shard 1 holds records 1 and 3


def test_input_context_sets_shard_and_per_replica_batch(tmp_path):
    import tensorflow as tf

    cfg = write_dataset(tmp_path, good_entries(4), split="val")
    cfg = tiny_cfg(data_dir=cfg.data_dir, records_dir=cfg.records_dir, batch_size=4)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    drawn = batches(dataset.make_dataset(cfg, "val", False, input_context=context), 10)
    assert [len(images) for images, _ in drawn] == [2]  # records 1 and 3, batch 4 / 2 replicas


def test_bad_input_is_skipped_or_gives_finite_targets(tmp_path):
    rng = np.random.default_rng(2)
    picture = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    _, jpeg = cv2.imencode(".jpg", picture)
    person = standing_person(40, 5, 50)
    hostile = person_record({0: (1e7, -1e7), 1: (30, 30), 2: (30, 30)}, [0, 0, 1e6, 1e6])
    entries = [
        ("missing.jpg", None, [person], (80, 60)),
        ("corrupt.jpg", b"this is not an image", [person], (80, 60)),
        ("truncated.jpg", jpeg.tobytes()[:len(jpeg) // 2], [person], (80, 60)),
        ("no_end_marker.jpg", jpeg.tobytes()[:-2], [person], (80, 60)),
        ("wrong_size.png", picture, [person], (160, 120)),
        ("grey.png", picture[:, :, 0], [person], (80, 60)),
        ("alpha.png", np.dstack([picture, picture[:, :, :1]]), [person], (80, 60)),
        ("wide.png", picture[:2, :], [standing_person(40, 0, 2)], (80, 2)),
        ("tall.png", picture[:, :1], [standing_person(0, 5, 50)], (1, 60)),
        ("nobody.jpg", picture, [], (80, 60)),
        ("unlabelled.jpg", picture, [person_record({}, [10, 10, 40, 50]), person], (80, 60)),
        ("hostile.jpg", picture, [hostile, person_record({4: (20, 20)})], (80, 60)),
        ("no_box.jpg", picture, [person_record({3: (10, 10)})], (80, 60)),
    ]
    cfg = write_dataset(tmp_path, entries)
    counts = collections.Counter()
    drawn = batches(dataset.make_dataset(cfg, "train", True, skip_counts=counts), 12)
    for images, targets in drawn:
        assert np.isfinite(images).all()
        assert all(np.isfinite(value).all() for value in targets.values())
        assert targets["heatmaps"].max() <= 1 and targets["heatmaps"].min() >= 0
    assert counts["missing_image"] >= 1 and counts["size_mismatch"] >= 1
    assert counts["unreadable_image"] >= 3
    assert set(counts) <= {"missing_image", "unreadable_image", "size_mismatch"}
    # Validation makes one pass: the five unusable images are skipped, the eight others come out.
    counts.clear()
    os.rename(os.path.join(cfg.records_dir, "train.jsonl"),
              os.path.join(cfg.records_dir, "val.jsonl"))
    drawn = batches(dataset.make_dataset(cfg, "val", False, skip_counts=counts), 20)
    assert sum(len(images) for images, _ in drawn) == 8
    assert sum(counts.values()) == 5


def test_pipeline_stops_when_every_sample_is_bad(tmp_path):
    import tensorflow as tf

    cfg = write_dataset(tmp_path, [("gone.jpg", None, [], (10, 10))])
    with pytest.raises(tf.errors.OpError, match="in a row were skipped"):
        batches(dataset.make_dataset(cfg, "train", True), 1)


def test_bad_record_lines_are_skipped(tmp_path):
    cfg = write_dataset(tmp_path, good_entries(2))
    path = os.path.join(cfg.records_dir, "train.jsonl")
    with open(path, "a") as handle:
        handle.write("{not json\n")
        handle.write(json.dumps({"image_id": "x", "image_path": "images/x.jpg", "width": 5,
                                 "height": 5, "people": [{"keypoints": [1, 2, 3]}]}) + "\n")
    records = dg.load_records(cfg, "train")
    assert len(records) == 2 and records.keypoints.shape == (2, J, 3)
    with pytest.raises(FileNotFoundError, match="pre-process"):
        dg.load_records(cfg, "test_a")


def test_intra_op_threads_auto_is_one_on_gpu_hosts_and_tensorflows_default_otherwise():
    assert dataset.intra_op_threads(-1, accelerators=True) == 1
    assert dataset.intra_op_threads(-1, accelerators=False) == 0
    assert dataset.intra_op_threads(0, accelerators=True) == 0
    assert dataset.intra_op_threads(3, accelerators=False) == 3
    assert "intra_op_threads" in dataset.pipeline_problem(config.make_config("tiny",
                                                                        intra_op_threads=-2))
    assert dataset.pipeline_problem(config.make_config("tiny", intra_op_threads=4)) == ""


def test_configure_host_threads_sizes_the_pool_before_tensorflow_starts():
    """In a fresh process the pool takes the size; once TensorFlow runs, it stays and warns."""
    code = ("import config, dataset, tensorflow as tf\n"
            "cfg = config.make_config('tiny')\n"
            "print(dataset.configure_host_threads(cfg, accelerators=True))\n"
            "print(tf.config.threading.get_intra_op_parallelism_threads())\n"
            "tf.constant(1.0) + 1.0\n"
            "print(dataset.configure_host_threads(config.make_config('tiny', intra_op_threads=3)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "1", "1"]
    assert "its intra-op pool stays" in result.stderr
