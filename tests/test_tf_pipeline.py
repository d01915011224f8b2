"""Tests for tf_pipeline.py: the graph-op sample path against the numpy oracle of
data_generator.py (targets within 1e-5, keypoints within 1e-3 px, identical masks), on hand
cases and on the real AI Challenger layouts of the shared annotations; the warp and colour
jitter against OpenCV; skips, determinism and tf.data service."""

import collections
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import tensorflow as tf

import config
import data_generator as dg
import data_service
import dataset
import tf_pipeline as tp
import utils
from conftest import ROOT
from test_data_generator import (batches, bright_centroid, cell_pixel, dot_image, good_entries,
                                 hostile_keypoints, people, standing_person, tiny_cfg,
                                 write_dataset)

J = config.NUM_JOINTS
SHARED_ANNOTATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "..", "shared", "data", "aic_keypoint_annotations_sample.json")
if not os.path.isfile(SHARED_ANNOTATIONS):
    SHARED_ANNOTATIONS = "/work/shared/data/aic_keypoint_annotations_sample.json"


class Draws:
    """A numpy Generator stand-in that hands the numpy functions the uniforms a TF sample drew,
    in the order they draw them: integers (the anchor person) takes the first; uniform and
    random take the rest in turn, as low + u * (high - low)."""

    def __init__(self, uniforms):
        self.person, self.queue = float(uniforms[0]), [float(u) for u in uniforms[1:]]

    def integers(self, count):
        return min(int(math.floor(self.person * count)), count - 1)

    def uniform(self, low, high, size=None):
        count = 1 if size is None else int(size)
        values, self.queue = self.queue[:count], self.queue[count:]
        values = [low + value * (high - low) for value in values]
        return values[0] if size is None else np.array(values)

    def random(self):
        value, self.queue = self.queue[0], self.queue[1:]
        return value


def tf_targets(keypoints, grid_shape, stride, sigma, paf_width):
    heatmaps, pafs = tp.render_targets(tf.constant(keypoints, tf.float64), grid_shape, stride,
                                       sigma, paf_width)
    return heatmaps.numpy(), pafs.numpy()


def assert_same_targets(keypoints, grid_shape, stride, sigma, paf_width):
    expected = dg.render_targets(keypoints, grid_shape, stride, sigma, paf_width)
    found = tf_targets(keypoints, grid_shape, stride, sigma, paf_width)
    for name, want, got in zip(("heatmaps", "pafs"), expected, found):
        assert got.shape == want.shape and got.dtype == np.float32, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------ hand cases
HAND_CASES = {
    "one joint on a cell": (people({7: cell_pixel(3, 5, 4)}), (8, 10), 4, 3.0, 1.0),
    "two people, max": (people({0: cell_pixel(2, 2, 4)}, {0: cell_pixel(2, 4, 4)}), (6, 7), 4,
                        4.0, 1.0),
    "horizontal limb": (people({13: cell_pixel(4, 1, 4), 12: cell_pixel(4, 6, 4)}), (9, 9), 4,
                        2.0, 1.0),
    "vertical limb": (people({0: cell_pixel(1, 3, 8), 1: cell_pixel(5, 3, 8)}), (7, 7), 8, 7.0,
                      1.0),
    "3-4-5 limb, edge cells": (people({0: (1.5, 1.5), 1: (1.5 + 4 * 4, 1.5 + 4 * 3)}), (9, 9), 4,
                               2.0, 1.0),
    "overlapping limbs averaged": (np.concatenate([
        people({13: cell_pixel(4, 1, 4), 12: cell_pixel(4, 7, 4)}),
        people({13: cell_pixel(1, 4, 4), 12: cell_pixel(7, 4, 4)}),
        people({13: cell_pixel(4, 1, 4), 12: cell_pixel(4, 7, 4)})]), (9, 9), 4, 2.0, 0.5),
    "zero length and occluded": (np.concatenate([
        people({13: cell_pixel(3, 3, 4), 12: cell_pixel(3, 3, 4)}),
        people({13: cell_pixel(3, 3, 4) + (2,), 12: cell_pixel(3, 6, 4) + (2,)}),
        people({13: cell_pixel(3, 3, 4) + (3,), 12: cell_pixel(3, 6, 4) + (3,)})]), (7, 7), 4,
        2.0, 1.0),
    "joint past the border": (people({13: (26.0, cell_pixel(2, 5, 4)[1])}), (6, 6), 4, 2.0, 1.0),
    "limb crossing the crop": (people({13: (-30.0, 13.5), 12: (200.0, 13.5)}), (7, 7), 4, 2.0,
                               0.5),
    "nobody": (np.zeros((0, J, 3)), (5, 6), 8, 7.0, 1.0),
    "hostile": (hostile_keypoints(), (12, 11), 8, 7.0, 1.0),
}


@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_tf_targets_equal_the_numpy_targets_on_hand_cases(case):
    assert_same_targets(*HAND_CASES[case])


def test_tf_targets_by_hand():
    stride, sigma = 4, 4.0
    heatmaps, _ = tf_targets(*HAND_CASES["two people, max"][:2], stride, sigma, 1.0)
    assert heatmaps[2, 3, 0] == pytest.approx(math.exp(-16 / 32), rel=1e-6)  # max, not sum
    assert heatmaps[2, 2, 0] == pytest.approx(1.0) and heatmaps[2, 2, -1] == pytest.approx(0.0)
    _, pafs = tf_targets(*HAND_CASES["overlapping limbs averaged"][:2], 4, 2.0, 0.5)
    cx, cy = 2 * config.LIMBS.index((13, 12)), 2 * config.LIMBS.index((13, 12)) + 1
    assert pafs[4, 4, cx] == pytest.approx(2 / 3) and pafs[4, 4, cy] == pytest.approx(1 / 3)
    assert tuple(pafs[4, 2, [cx, cy]]) == (1.0, 0.0)


def test_compiled_targets_with_the_people_count_left_open_equal_numpy():
    # As the training plan runs them: XLA-compiled, traced once for any number of people, the
    # loop over the people running as many times as the sample has.
    compiled = tf.function(lambda keypoints: tp.render_targets(keypoints, (9, 9), 4, 2.0, 1.0),
                           jit_compile=True, autograph=False, input_signature=[
                               tf.TensorSpec([None, J, 3], tf.float64)])
    crowd = np.concatenate([HAND_CASES["overlapping limbs averaged"][0],
                            HAND_CASES["two people, max"][0]])
    for keypoints in (np.zeros((0, J, 3)), crowd[:1], crowd):
        found = compiled(tf.constant(keypoints, tf.float64))
        expected = dg.render_targets(keypoints, (9, 9), 4, 2.0, 1.0)
        for want, got in zip(expected, found):
            np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)
    assert compiled.experimental_get_tracing_count() == 1


def test_only_the_first_count_people_are_drawn():
    # planned pads the people to a PEOPLE_COUNTS size and stops the loop at the real ones; here
    # the row after the count is a real person, so drawing it would show.
    crowd = np.concatenate([HAND_CASES["overlapping limbs averaged"][0],
                            HAND_CASES["two people, max"][0]])
    found = tp.render_targets(tf.constant(crowd, tf.float64), (9, 9), 4, 2.0, 1.0,
                              count=tf.constant(1))
    expected = dg.render_targets(crowd[:1], (9, 9), 4, 2.0, 1.0)
    everybody = dg.render_targets(crowd, (9, 9), 4, 2.0, 1.0)
    for want, got, more in zip(expected, found, everybody):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5)
        assert np.abs(more - want).max() > 0.1


def hlo_steps(hlo):
    """{computation header: its instructions that XLA's CPU runtime runs as steps} of the entry
    computation and of every while-loop body in optimised HLO text."""
    steps = {}
    for block in re.split(r"\n(?=\S)", hlo):
        header, *lines = block.split("\n")
        if header.startswith("ENTRY") or "body" in header.split("(")[0]:
            steps[header[:60]] = [line for line in lines if " = " in line and not re.search(
                r" (parameter|constant|bitcast|get-tuple-element|tuple)\(", line)]
    return steps


def test_targets_kernel_is_small_enough_to_run_on_the_calling_thread():
    # XLA's CPU runtime runs a compiled function with more than 8 steps concurrently on the
    # intra-op pool and makes the caller wait (tf_pipeline.targets_kernel): the kernel's top
    # level and its loop body must stay at 8 steps or fewer, whatever is added to them.
    cfg = config.make_config("paper")
    keypoints = tf.constant(HAND_CASES["two people, max"][0] * [20, 20, 1], tf.float64)
    grid = (cfg.input_size // cfg.stride,) * 2
    inputs = (tf.constant(2), tp.person_terms(keypoints, grid, cfg.stride, cfg.heatmap_sigma),
              tf.eye(3, dtype=tf.float64), tf.constant(640.0, tf.float64),
              tf.constant(480.0, tf.float64), tf.fill([2, 4], tf.constant(np.nan, tf.float64)))
    kernel = tp.targets_kernel(cfg)
    steps = hlo_steps(kernel.experimental_get_compiler_ir(*inputs)(stage="optimized_hlo"))
    assert any(header.startswith("ENTRY") for header in steps) and len(steps) == 2
    for header, lines in steps.items():
        assert 2 <= len(lines) <= 8, (header, lines)
    joints, limb_sums, mask = kernel(*inputs)
    heatmaps, pafs = tp.finished_maps(joints, limb_sums)
    want = tp.render_targets(keypoints, grid, cfg.stride, cfg.heatmap_sigma, cfg.paf_width)
    np.testing.assert_allclose(heatmaps.numpy(), want[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(pafs.numpy(), want[1].numpy(), rtol=0, atol=1e-6)
    assert mask.shape == grid + (1,) and float(tf.reduce_min(mask)) == 1.0


def test_warp_kernel_is_small_enough_to_run_on_the_calling_thread():
    # The other XLA kernel of every training sample, under the same rule as the targets kernel.
    kernel = tp.window_kernel(368, 128.0, 0.1)
    inputs = (tf.zeros([3 * 4096], tf.uint8), tf.constant([64, 64]),
              tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), tf.constant([0.5] * 3, tf.float64))
    steps = hlo_steps(kernel.experimental_get_compiler_ir(*inputs)(stage="optimized_hlo"))
    assert list(steps)[0].startswith("ENTRY") and 1 <= len(steps[list(steps)[0]]) <= 8, steps


# ------------------------------------------------------------------------------ AIC layouts
# Joint positions of a standing person, as fractions of its height from the head top (x, y).
SKELETON = np.array([(-.12, .2), (-.15, .35), (-.16, .5), (.12, .2), (.15, .35), (.16, .5),
                     (-.07, .52), (-.08, .75), (-.08, .98), (.07, .52), (.08, .75), (.08, .98),
                     (0, 0), (0, .17)])


def aic_like_layouts(count, seed):
    """(keypoints (P, 14, 3), boxes (P, 4), width, height) shaped like AI Challenger's: 3 to 12
    people of many sizes, often overlapping or cut by the image edge (their joints clipped to it,
    as AIC's are), v = 1, 2 and 3 mixed (v = 3 at (0, 0)); one person in four or so has no
    labelled joint (a masked box), and now and then one has no box."""
    rng = np.random.default_rng(seed)
    layouts = []
    for number in range(count):
        width, height = float(rng.integers(200, 1400)), float(rng.integers(200, 1000))
        size = int(rng.choice([3, 4, 6, 12]))  # people padded to 4, 8 or 16: three kernels
        heights = rng.uniform(30, 1.2 * height, size)
        tops = rng.uniform([0, -0.2 * height], [width, height], (size, 2))
        turns = rng.uniform(-0.6, 0.6, size)
        rotation = np.stack([np.cos(turns), -np.sin(turns), np.sin(turns), np.cos(turns)],
                            1).reshape(size, 2, 2)
        points = tops[:, None] + np.einsum("pij,kj->pki", rotation, SKELETON) * heights[:, None,
                                                                                          None]
        points = np.clip(points + rng.normal(0, 3, points.shape), 0, [width - 1, height - 1])
        flags = rng.choice([1, 2, 3], (size, J), p=[0.6, 0.25, 0.15])
        flags[rng.uniform(size=size) < 0.25] = config.UNLABELLED
        keypoints = np.concatenate([points, flags[..., None].astype(float)], axis=2)
        keypoints[flags == config.UNLABELLED] = (0.0, 0.0, config.UNLABELLED)
        boxes = np.concatenate([points.min(axis=1) - 5, points.max(axis=1) + 5], axis=1)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        boxes[rng.uniform(size=size) < 0.08] = np.nan
        layouts.append((keypoints, boxes, width, height))
    return layouts


def shared_aic_layouts(limit):
    """The first `limit` images of the shared real annotations as layouts, or [] where they are
    not on this machine (in CI); they carry no image sizes, so the people's extent plus a
    margin stands in."""
    if not os.path.isfile(SHARED_ANNOTATIONS):
        return []
    with open(SHARED_ANNOTATIONS) as handle:
        images = json.load(handle)[:limit]
    layouts = []
    for image in images:
        names = sorted(image["keypoint_annotations"])
        keypoints = np.array([image["keypoint_annotations"][name] for name in names],
                             float).reshape(-1, J, 3)
        boxes = np.array([image["human_annotations"][name] for name in names], float)
        extent = np.concatenate([keypoints[..., :2].reshape(-1, 2), boxes.reshape(-1, 2)])
        width, height = extent.max(axis=0) + 20
        layouts.append((keypoints, boxes, float(width), float(height)))
    return layouts


def graph_transform():
    """tp.training_transform and tp.transform_keypoints in one function, traced once."""
    scalar = tf.TensorSpec([], tf.float64)

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, J, 3], tf.float64), tf.TensorSpec([None, 4], tf.float64), scalar,
        scalar, tf.TensorSpec([tp.NUM_DRAWS], tf.float64)])
    def transform(keypoints, boxes, width, height, draws):
        matrix, flipped = tp.training_transform(cfg, keypoints, boxes, width, height, draws)
        return flipped, tp.transform_keypoints(keypoints, matrix, flipped)

    # The paper preset, with the padding masked too so that both parts of the mask are checked.
    cfg = config.make_config("paper", ignore_padding=True)
    return cfg, transform


def test_training_plan_equals_the_numpy_oracle_on_aic_layouts():
    """The XLA-compiled plan (targets and mask) and the graph geometry against the numpy
    functions, given the same draws, on AIC-like layouts (and on the shared real ones where
    they are present)."""
    cfg, transform = graph_transform()
    rng = np.random.default_rng(13)
    checked = collections.Counter()
    for keypoints, boxes, width, height in aic_like_layouts(16, 7) + shared_aic_layouts(24):
        draws = rng.uniform(size=tp.NUM_DRAWS)
        arguments = (tf.constant(keypoints), tf.constant(boxes), tf.constant(width, tf.float64),
                     tf.constant(height, tf.float64))
        heatmaps, pafs, mask, *_ = tp.planned(cfg, *arguments, tf.constant([int(height),
                                                                            int(width)]),
                                              tf.constant(True), tf.constant(draws))
        flipped, moved = transform(*arguments, tf.constant(draws))
        want_matrix, want_flipped = dg.training_transform(cfg, keypoints, boxes, width, height,
                                                          Draws(draws))
        want = dg.sample_targets(cfg, want_matrix, want_flipped, keypoints, boxes, width, height)
        assert bool(flipped) == want_flipped
        np.testing.assert_array_equal(moved.numpy()[..., 2], want["keypoints"][..., 2])
        np.testing.assert_allclose(moved.numpy()[..., :2], want["keypoints"][..., :2], rtol=0,
                                   atol=1e-3)
        np.testing.assert_allclose(heatmaps.numpy(), want["heatmaps"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(pafs.numpy(), want["pafs"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(mask.numpy(), want["mask"])
        inside = (np.abs(want["keypoints"][..., :2] - (cfg.input_size - 1) / 2)
                  <= cfg.input_size / 2).all(axis=-1)
        checked["people"] += len(keypoints)
        checked["joints past the crop"] += int(((want["keypoints"][..., 2] < 3) & ~inside).sum())
        checked["limb cells"] += int((np.abs(want["pafs"]) > 0).sum())
        checked["masked people"] += len(dg.unannotated_boxes(keypoints, boxes, width, height))
        checked["masked cells"] += int((want["mask"] == 0).sum())
    assert checked["people"] > 60 and checked["limb cells"] > 1000 and checked["masked people"] > 5
    assert checked["joints past the crop"] > 20 and checked["masked cells"] > 100


def test_letterbox_transform_equals_numpy():
    cfg = tiny_cfg(input_size=32)
    for width, height in ((200, 50), (64, 40), (1, 60), (333, 777)):
        matrix, new_size = tp.letterbox_transform(cfg, tf.constant(float(width), tf.float64),
                                                  tf.constant(float(height), tf.float64))
        want_matrix, want_size = dg.letterbox_transform(cfg, width, height)
        np.testing.assert_allclose(matrix.numpy(), want_matrix, rtol=0, atol=1e-12)
        assert tuple(new_size.numpy()) == want_size


# ------------------------------------------------------------------------------ images
def write_image(tmp_path, name, image):
    path = str(tmp_path / name)
    cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def tf_sample(cfg, path, size, keypoints, boxes, draws):
    """The pipeline's training sample of one image with the given draws, as numpy arrays."""
    record = (tf.constant(path), tf.constant(tp.glob_escaped(path)), tf.constant(size, tf.int64),
              tf.constant(keypoints, tf.float64), tf.constant(boxes, tf.float64))
    image, heatmaps, pafs, mask, reason = tp.training_sample(cfg, record, tf.constant(draws))
    return image.numpy(), heatmaps.numpy(), int(reason)


@pytest.mark.parametrize("name, scale_max", [("dot.jpg", 2.5), ("dot.jpg", 8.0),
                                             ("dot.png", 2.5)])
def test_warp_equals_opencv_and_follows_the_keypoint(tmp_path, name, scale_max):
    # A large image and a 300-px person in a 96-px crop: scale_max 2.5 shrinks the image 2 to 4
    # times (a reduced JPEG decode of a window, or a whole PNG), 8.0 keeps it about life-size
    # (a full-resolution window).
    width, height, x, y = 900, 700, 431.0, 302.0
    path = write_image(tmp_path, name, dot_image(width, height, x, y, radius=20))
    cfg = tiny_cfg(input_size=96, stride=4, scale_min=scale_max / 2, scale_max=scale_max,
                   center_jitter=8, color_jitter=0.0, pad_value=0)
    keypoints, boxes = people({0: (x, y)}), np.array([[x - 100, y - 150, x + 100, y + 150]])
    rng = np.random.default_rng(5)
    for _ in range(2):
        draws = rng.uniform(size=tp.NUM_DRAWS)
        image, heatmaps, reason = tf_sample(cfg, path, (width, height), keypoints, boxes, draws)
        assert reason == 0 and image.shape == (96, 96, 3) and image.dtype == np.uint8
        want = dg.make_sample(cfg, path, (width, height), keypoints, boxes, True, Draws(draws))
        difference = np.abs(image.astype(np.float32) - want["image"].astype(np.float32))
        # Different JPEG decoders and cv2's fixed-point weights: about a grey level apart.
        assert difference.mean() < 1.0 and np.percentile(difference, 99) < 6
        joint = 3 if want["keypoints"][0, 3, 2] == 1 else 0
        found = bright_centroid(image)
        assert np.hypot(*(np.array(found) - want["keypoints"][0, joint, :2])) < 1.0
        np.testing.assert_allclose(heatmaps, want["heatmaps"], rtol=0, atol=1e-5)


def test_colour_jitter_equals_opencv_within_rounding():
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (40, 50, 3), np.uint8), (0, 0), 1.0)
    for draws in rng.uniform(size=(4, 3)):
        want = dg.jitter_colors(image[:, :, ::-1].copy(), 0.3, Draws([0.0, *draws]))[:, :, ::-1]
        got = tp.jitter_colors(tf.constant(image, tf.float32), tf.constant(draws), 0.3).numpy()
        assert np.abs(got - want).max() <= 2.0  # OpenCV rounds twice through uint8
    unchanged = tp.jitter_colors(tf.constant(image, tf.float32), tf.constant(draws), 0.0)
    assert np.array_equal(unchanged.numpy(), image)


def test_training_batches_depend_on_the_seed_only_not_on_the_threads(tmp_path):
    cfg = write_dataset(tmp_path, good_entries(5))
    first = batches(dataset.make_dataset(cfg, "train", True), 3)
    # One thread instead of tf.data's default pool: each sample's randomness comes from its
    # key, and the map keeps the order, so the same batches come out.
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    again = batches(dataset.make_dataset(cfg, "train", True).with_options(options), 3)
    for (a, ta), (b, tb) in zip(first, again):
        assert np.array_equal(a, b) and all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert not np.array_equal(first[0][0], first[1][0])
    other = batches(dataset.make_dataset(dataclasses.replace(cfg, seed=1), "train", True), 1)
    assert not np.array_equal(other[0][0], first[0][0])


def test_training_shards_draw_disjoint_records_that_cover_the_set(tmp_path):
    # Plain images, one grey level per record, large enough around their small person that no
    # crop reaches their border: a sample's centre pixel is its record's level times the
    # brightness jitter (1 +- 0.1, which keeps the levels apart).
    levels = np.array([20, 60, 120, 200])
    entries = [(f"im{number}.png", np.full((300, 400, 3), level, np.uint8),
                [standing_person(200, 130, 40)], (400, 300)) for number, level in enumerate(levels)]
    cfg = write_dataset(tmp_path, entries)
    assert cfg.color_jitter <= 0.1
    centre = cfg.input_size // 2
    seen = []
    for shard_index in (0, 1):
        drawn = batches(dataset.make_dataset(cfg, "train", True, shard=(2, shard_index)), 4)
        values = np.concatenate([images[:, centre, centre, 0] for images, _ in drawn])
        ratios = values[:, None] / levels[None, :]
        assert (np.abs(ratios - 1).min(axis=1) <= 0.11).all()
        seen.append(set(levels[np.abs(ratios - 1).argmin(axis=1)].tolist()))
    assert seen == [{20, 120}, {60, 200}]


def encoded(extension, image):
    return cv2.imencode(extension, image)[1].tobytes()


def test_file_checks_and_decoding_agree_with_utils_decode_image(tmp_path):
    rng = np.random.default_rng(6)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (24, 36, 3), np.uint8), (0, 0), 2.0)
    jpeg, png = encoded(".jpg", picture), encoded(".png", picture)
    files = {"jpeg": jpeg, "png": png, "bmp": encoded(".bmp", picture),
             "webp": encoded(".webp", picture), "grey png": encoded(".png", picture[:, :, 0]),
             "jpeg without its end marker": jpeg[:-2], "png without IEND": png[:-12],
             "gif": b"GIF89a" + bytes(40), "empty": b"", "text": b"no picture here\n",
             "zip": b"PK\x03\x04" + bytes(30), "tiff": encoded(".tiff", picture)}
    decoded = 0
    for name, contents in files.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(contents)
        try:
            want = utils.read_image_rgb(str(path))
        except utils.ImageError:
            want = None
        kind, reason = tp.readable_reason(tf.constant(contents), tf.constant(0))
        if name == "tiff":  # the documented exception: TensorFlow has no TIFF decoder
            assert want is not None and int(reason) > 0
            continue
        assert (int(reason) == 0) == (want is not None), name
        if want is not None:
            got = tp.decode(tf.constant(contents), kind, tf.constant(0)).numpy()
            # libjpeg and libwebp behind both; JPEG's inverse DCT may round a level apart.
            assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 1, name
            decoded += 1
    assert decoded == 5


@pytest.mark.parametrize("pipeline", ["tf", "numpy"])
def test_missing_corrupt_and_undecodable_files_are_skipped_and_counted(tmp_path, caplog,
                                                                       pipeline):
    rng = np.random.default_rng(4)
    picture = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    person = standing_person(40, 5, 50)
    # Right magic bytes and end marker, a broken header: only the decoder itself can tell.
    broken_header = b"\xff\xd8\xff\xe0" + b"\x00" * 40 + b"\xff\xd9"
    entries = [("missing.jpg", None, [person], (80, 60)),
               ("corrupt.jpg", b"not an image at all", [person], (80, 60)),
               ("broken_header.jpg", broken_header, [person], (80, 60)),
               ("good.jpg", picture, [person], (80, 60))]
    cfg = write_dataset(tmp_path, entries, split="val")
    cfg = dataclasses.replace(cfg, pipeline=pipeline)
    counts = collections.Counter()
    with caplog.at_level("WARNING", logger="data_generator"):
        drawn = batches(dataset.make_dataset(cfg, "val", False, skip_counts=counts), 5)
    assert sum(len(images) for images, _ in drawn) == 1
    assert counts["missing_image"] == 1
    # The numpy path's decoder reports the broken header as unreadable; the graph's raises,
    # and the pipeline counts the sample that tf.data dropped as an error.
    if pipeline == "tf":
        assert counts["unreadable_image"] == 1 and counts["error"] == 1
    else:
        assert counts["unreadable_image"] == 2
    logged = caplog.text
    assert "missing.jpg" in logged and "corrupt.jpg" in logged


def test_unknown_pipeline_and_service_with_numpy_are_refused(tmp_path):
    cfg = write_dataset(tmp_path, good_entries(2))
    with pytest.raises(ValueError, match="pipeline"):
        dataset.make_dataset(dataclasses.replace(cfg, pipeline="opencv"), "train", True)
    with pytest.raises(ValueError, match="graph ops"):
        dataset.make_dataset(dataclasses.replace(cfg, pipeline="numpy",
                                            data_service_address="grpc://localhost:1"),
                        "train", True)


def test_tf_data_service_serves_the_training_batches(tmp_path):
    """A local dispatcher and one worker, started as data_service.py starts them."""
    dispatcher = data_service.start_server("dispatcher", 0)
    worker = data_service.start_server("worker", 0, dispatcher.target.split("://")[1],
                                       host="localhost")
    cfg = dataclasses.replace(write_dataset(tmp_path, good_entries(6)),
                              data_service_address=dispatcher.target)
    drawn = batches(dataset.make_dataset(cfg, "train", True), 4)
    assert len(drawn) == 4
    size, grid = cfg.input_size, cfg.input_size // cfg.stride
    for images, targets in drawn:
        assert images.shape == (cfg.batch_size, size, size, 3) and images.dtype == np.uint8
        assert targets["heatmaps"].shape == (cfg.batch_size, grid, grid, config.NUM_HEATMAPS)
        assert targets["heatmaps"][..., :J].max() > 0.5 and np.isfinite(targets["pafs"]).all()
    assert not np.array_equal(drawn[0][0], drawn[1][0])
    del worker, dispatcher


def test_training_batches_keep_coming_when_a_service_worker_is_killed(tmp_path):
    """Two workers, one of them data_service.py in a process of its own, SIGKILLed mid-run:
    the dispatcher's dynamic sharding carries on with the other (the killed worker's splits
    are lost, as docs/training.md says), without a stall or an error."""
    dispatcher = data_service.start_server("dispatcher", 0)
    address = dispatcher.target.split("://")[1]
    local = data_service.start_server("worker", 0, address, host="localhost")
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "data_service.py"), "worker",
                              "--dispatcher", address, "--host", "localhost"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while dispatcher._num_workers() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dispatcher._num_workers() == 2, "the worker process never registered"
        cfg = dataclasses.replace(write_dataset(tmp_path, good_entries(6)),
                                  data_service_address=dispatcher.target)
        elements = iter(dataset.make_dataset(cfg, "train", True))
        before = [next(elements)[0].numpy() for _ in range(10)]
        child.kill()
        child.wait(timeout=30)
        drawn = []
        reader = threading.Thread(target=lambda: drawn.extend(
            next(elements)[0].numpy() for _ in range(100)), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert len(drawn) == 100, f"only {len(drawn)} batches after the kill"
        assert all(images.shape == before[0].shape for images in drawn)
    finally:
        child.kill()
        child.wait(timeout=30)
    del local, dispatcher
