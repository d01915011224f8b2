"""A synthetic AI Challenger keypoint set: images of drawn people with exact annotations.

``pre-process.py --synthetic N --seed S`` calls write_synthetic, which writes N images (90 %
train, at least one validation image) in the official folder layout and JSON format under a data
folder, so that the whole chain runs without the real data. Image i of a set depends on
(seed, i) alone: the same seed gives the same bytes whatever the thread count. A set is replaced
as a whole, and check_complete refuses a folder that holds parts of two sets.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import shutil
import tempfile

import cv2
import numpy as np

import utils
from config import AIC_RELEASES, NUM_JOINTS, OCCLUDED, UNLABELLED, VISIBLE

# The file that marks a release folder as synthetic; it also names the set (seed and splits).
SYNTHETIC_MARKER = "SYNTHETIC.txt"
SYNTHETIC_SPLITS = ("train", "val")
SYNTHETIC_JPEG_QUALITY = 90
SYNTHETIC_VAL_FRACTION = 0.1
# Chance of 1..6 people in a synthetic image (mean 2.7, close to AIC's 2.75 per image).
PEOPLE_PROBABILITIES = (0.3, 0.25, 0.17, 0.12, 0.09, 0.07)
SKIN_TONES = ((190, 210, 245), (150, 180, 225), (110, 150, 205), (85, 115, 165), (60, 85, 125),
              (45, 60, 90))


class SyntheticError(RuntimeError):
    """The set cannot be written here (real data in the way) or what is there is not one set."""


# --------------------------------------------------------------------------------------------
# Synthetic people.
# --------------------------------------------------------------------------------------------
def _rotate(vector, degrees):
    """Rotate an (x, y) vector; with y pointing down, positive angles turn clockwise on screen."""
    angle = math.radians(degrees)
    cosine, sine = math.cos(angle), math.sin(angle)
    return np.array([vector[0] * cosine - vector[1] * sine, vector[0] * sine + vector[1] * cosine])


def _limb_angle(rng, ranges):
    """Draw an angle from one of several (probability, low, high) ranges, in degrees."""
    choice = rng.choice(len(ranges), p=[weight for weight, _, _ in ranges])
    return rng.uniform(ranges[choice][1], ranges[choice][2])


def sample_skeleton(rng, height, facing):
    """Joint positions (14, 2) float (x, y) of one person, neck at the origin, y down.

    height: standing height in pixels (head top to ankles). Segment lengths are human
    proportions of it with +-10 % jitter; the torso leans, the head tilts and every shoulder,
    elbow, hip and knee bends within human joint limits. facing = +1 faces the camera (the
    person's right side on the image's left), -1 faces away.
    """
    joints = np.zeros((NUM_JOINTS, 2))
    length = height * rng.uniform(0.9, 1.1, size=7)
    down = _rotate((0.0, 1.0), rng.uniform(-15, 15))
    side = np.array([down[1], -down[0]])  # Points to the image's right.
    width = rng.uniform(0.55, 1.0)  # Turning away from the camera narrows the body.
    right = -facing  # Image-side sign of the person's right.
    hip_centre = down * 0.30 * length[0]
    for sign, shoulder, hip in ((right, 0, 6), (-right, 3, 9)):
        joints[shoulder] = side * sign * 0.115 * length[1] * width + down * 0.03 * height
        joints[hip] = hip_centre + side * sign * 0.08 * length[1] * width
    joints[12] = _rotate(-down, rng.uniform(-20, 20)) * 0.183 * length[2]
    knee_bend = rng.choice((-1, 1))
    for sign, (shoulder, elbow, wrist), (hip, knee, ankle) in (
            (right, (0, 1, 2), (6, 7, 8)), (-right, (3, 4, 5), (9, 10, 11))):
        upper = _rotate(down, -sign * _limb_angle(rng, ((0.5, -15, 45), (0.35, 45, 110),
                                                        (0.15, 110, 170))))
        joints[elbow] = joints[shoulder] + upper * 0.165 * length[3]
        flexion = _limb_angle(rng, ((0.4, 0, 20), (0.6, 20, 145)))
        fore = _rotate(upper, rng.choice((-1, 1)) * flexion)
        joints[wrist] = joints[elbow] + fore * 0.145 * length[4]
        thigh = _rotate(down, -sign * _limb_angle(rng, ((0.8, -12, 35), (0.2, 35, 95))))
        joints[knee] = joints[hip] + thigh * 0.245 * length[5]
        shin = _rotate(thigh, knee_bend * _limb_angle(rng, ((0.5, 0, 15), (0.5, 15, 120))))
        joints[ankle] = joints[knee] + shin * 0.245 * length[6]
    return joints


def _random_colour(rng, saturation=(0.25, 1.0), value=(0.25, 1.0)):
    red, green, blue = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation),
                                           rng.uniform(*value))
    return (int(blue * 255), int(green * 255), int(red * 255))  # OpenCV's BGR


def _shade(colour, factor):
    return tuple(int(min(255, channel * factor)) for channel in colour)


def sample_style(rng, height):
    """Colours (BGR) and widths (pixels) of one person's clothes and body parts."""
    skin = tuple(min(255, max(0, channel + int(rng.integers(-15, 16))))
                 for channel in SKIN_TONES[rng.integers(len(SKIN_TONES))])
    shirt, trousers = _random_colour(rng), _random_colour(rng)
    build = rng.uniform(0.8, 1.25)
    widths = {name: max(3, int(round(fraction * height * build))) for name, fraction in (
        ("upper_arm", 0.05), ("forearm", 0.042), ("thigh", 0.072), ("shin", 0.058),
        ("neck", 0.045), ("hand", 0.028), ("foot", 0.035))}
    return {
        "skin": skin, "hair": _random_colour(rng, (0.2, 0.8), (0.05, 0.45)), "shirt": shirt,
        "forearm": skin if rng.random() < 0.5 else _shade(shirt, 0.75),
        "trousers": trousers, "shin": skin if rng.random() < 0.25 else _shade(trousers, 0.8),
        "shoe": _random_colour(rng, (0.0, 0.6), (0.05, 0.5)), "widths": widths,
        "head": (0.068 * height, 0.05 * height * rng.uniform(0.9, 1.1)),
    }


def _line(start, end, width, colour, outline=True):
    """A thick line with round ends, with a darker outline one pixel wider on each side."""
    shapes = [("line", start, end, width + 2, _shade(colour, 0.45))] if outline else []
    return shapes + [("line", start, end, width, colour)]


def _disc(centre, radius, colour):
    return [("circle", centre, max(1, int(round(radius))), colour)]


def _leg_shapes(joints, style, facing):
    widths, shapes = style["widths"], []
    for hip, knee, ankle, sign in ((6, 7, 8, -facing), (9, 10, 11, facing)):
        shin = joints[ankle] - joints[knee]
        toe = joints[ankle] + _rotate(shin / (np.linalg.norm(shin) + 1e-6), -sign * 75) * (
            1.8 * widths["shin"])
        shapes += _line(joints[ankle], toe.round().astype(int), widths["foot"], style["shoe"])
        shapes += _line(joints[hip], joints[knee], widths["thigh"], style["trousers"])
        shapes += _line(joints[knee], joints[ankle], widths["shin"], style["shin"])
        # Darker discs on the joints make their centres, where the keypoints are, findable.
        shapes += _disc(joints[knee], 0.4 * widths["shin"], _shade(style["trousers"], 0.55))
        shapes += _disc(joints[ankle], 0.4 * widths["shin"], _shade(style["shoe"], 0.6))
    return shapes


def _torso_shapes(joints, style):
    corners = joints[[0, 3, 9, 6]].astype(float)
    centre = corners.mean(axis=0)
    outward = corners - centre
    outward /= np.linalg.norm(outward, axis=1, keepdims=True) + 1e-6
    polygon = (corners + outward * 0.5 * style["widths"]["upper_arm"]).round().astype(np.int32)
    shapes = [("polygon", polygon, style["shirt"]),
              ("outline", polygon, _shade(style["shirt"], 0.45))]
    for hip in (6, 9):
        shapes += _disc(joints[hip], 0.4 * style["widths"]["thigh"],
                        _shade(style["trousers"], 0.55))
    return shapes


def _head_shapes(joints, style, facing):
    """Neck and head: an ellipse whose far end is exactly the head-top keypoint."""
    neck, top = joints[13].astype(float), joints[12].astype(float)
    major, minor = style["head"]
    axis = (top - neck) / (np.linalg.norm(top - neck) + 1e-6)
    centre = (top - axis * major).round().astype(int)
    angle = math.degrees(math.atan2(axis[1], axis[0]))
    axes = (int(round(major)), int(round(minor)))
    shapes = _line(joints[13], centre, style["widths"]["neck"], style["skin"], outline=False)
    shapes += _disc(joints[13], 0.55 * style["widths"]["neck"], _shade(style["shirt"], 0.5))
    shapes.append(("ellipse", centre, axes, angle, 0, 360, _shade(style["hair"], 0.8)))
    if facing > 0:  # A face with eyes; seen from behind the head is all hair.
        shapes.append(("ellipse", centre, (max(1, axes[0] - 1), max(1, axes[1] - 1)), angle,
                       100, 260, style["skin"]))
        across = np.array([-axis[1], axis[0]])
        for sign in (-1, 1):
            eye = centre - axis * 0.15 * major + across * sign * 0.4 * minor
            shapes += _disc(eye.round().astype(int), 0.13 * minor, (30, 30, 30))
    shapes.append(("ellipse", centre, (max(1, axes[0] + 1), max(1, axes[1] + 1)), angle, 0, 360,
                   None))  # None: label map only, so the head's outline counts as the body.
    return shapes


def _arm_shapes(joints, style):
    widths, shapes = style["widths"], []
    for shoulder, elbow, wrist in ((0, 1, 2), (3, 4, 5)):
        shapes += _line(joints[shoulder], joints[elbow], widths["upper_arm"], style["shirt"])
        shapes += _line(joints[elbow], joints[wrist], widths["forearm"], style["forearm"])
        shapes += _disc(joints[wrist], widths["hand"], style["skin"])
        shapes += _disc(joints[wrist], 0.35 * widths["forearm"], _shade(style["skin"], 0.6))
        shapes += _disc(joints[elbow], 0.4 * widths["forearm"], _shade(style["forearm"], 0.55))
        shapes += _disc(joints[shoulder], 0.4 * widths["upper_arm"], _shade(style["shirt"], 0.55))
    return shapes


def person_shapes(joints, style, facing):
    """The drawing primitives of one person, back to front: legs, torso, head, then arms."""
    joints = np.asarray(joints).astype(int)
    return (_leg_shapes(joints, style, facing) + _torso_shapes(joints, style)
            + _head_shapes(joints, style, facing) + _arm_shapes(joints, style))


def _draw_shape(canvas, shape, colour, line_type):
    kind = shape[0]
    if kind == "line":
        cv2.line(canvas, tuple(map(int, shape[1])), tuple(map(int, shape[2])), colour,
                 int(shape[3]), line_type)
    elif kind == "circle":
        cv2.circle(canvas, tuple(map(int, shape[1])), int(shape[2]), colour, -1, line_type)
    elif kind == "polygon":
        cv2.fillPoly(canvas, [shape[1]], colour, line_type)
    elif kind == "outline":
        cv2.polylines(canvas, [shape[1]], True, colour, 2, line_type)
    elif kind == "ellipse":
        cv2.ellipse(canvas, tuple(map(int, shape[1])), tuple(shape[2]), shape[3], shape[4],
                    shape[5], colour, -1, line_type)


def draw_person(image, labels, shapes, number):
    """Draw shapes on the BGR image (anti-aliased) and `number` on the label map (uint8)."""
    for shape in shapes:
        if shape[-1] is not None:
            _draw_shape(image, shape, shape[-1], cv2.LINE_AA)
        _draw_shape(labels, shape, int(number), cv2.LINE_8)


def shapes_extent(shapes):
    """(x1, y1, x2, y2) float of everything the shapes cover."""
    points = []
    for shape in shapes:
        if shape[0] == "line":
            radius = shape[3] / 2.0
            for end in (shape[1], shape[2]):
                points += [np.asarray(end) - radius, np.asarray(end) + radius]
        elif shape[0] == "circle":
            points += [np.asarray(shape[1]) - shape[2], np.asarray(shape[1]) + shape[2]]
        elif shape[0] in ("polygon", "outline"):
            points += list(shape[1] - 1) + list(shape[1] + 1)
        elif shape[0] == "ellipse":
            points += list(cv2.ellipse2Poly(tuple(map(int, shape[1])), tuple(shape[2]),
                                            int(round(shape[3])), 0, 360, 10))
    points = np.asarray(points, dtype=float)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


# --------------------------------------------------------------------------------------------
# Synthetic scenes.
# --------------------------------------------------------------------------------------------
def _draw_distractor(rng, image):
    """One background object: a box, disc, blob, polygon or thin lines; never a limb shape."""
    height, width = image.shape[:2]
    size = min(height, width)
    centre = (int(rng.integers(width)), int(rng.integers(height)))
    colour = _random_colour(rng, (0.0, 1.0), (0.1, 1.0))
    kind = rng.integers(5)
    if kind == 0:
        corner = (centre[0] + int(rng.uniform(0.05, 0.5) * size),
                  centre[1] + int(rng.uniform(0.05, 0.5) * size))
        cv2.rectangle(image, centre, corner, colour, -1 if rng.random() < 0.7 else 2)
    elif kind == 1:
        cv2.circle(image, centre, int(rng.uniform(0.02, 0.15) * size), colour, -1, cv2.LINE_AA)
    elif kind == 2:
        axes = (int(rng.uniform(0.04, 0.3) * size), int(rng.uniform(0.04, 0.3) * size))
        cv2.ellipse(image, centre, axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
    elif kind == 3:
        points = np.asarray(centre) + rng.uniform(-0.2, 0.2, size=(rng.integers(3, 7), 2)) * size
        cv2.fillPoly(image, [points.astype(np.int32)], colour, cv2.LINE_AA)
    else:  # A few parallel thin lines: stripes, railings.
        step = rng.uniform(-0.06, 0.06, size=2) * size
        end = rng.uniform(-0.6, 0.6, size=2) * size
        for k in range(int(rng.integers(1, 6))):
            start = np.asarray(centre) + k * step
            cv2.line(image, tuple(start.astype(int)), tuple((start + end).astype(int)), colour,
                     int(rng.integers(1, 3)), cv2.LINE_AA)


def draw_background(rng, height, width):
    """A textured, cluttered BGR uint8 background: colour gradients, texture and objects."""
    coarse = rng.uniform(0, 255, size=(int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3))
    image = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    texture = rng.normal(0, rng.uniform(5, 30), size=(height // 8 + 2, width // 8 + 2, 3))
    image += cv2.resize(texture.astype(np.float32), (width, height),
                        interpolation=cv2.INTER_CUBIC)
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 26))):
        _draw_distractor(rng, image)
    return image


def _place(rng, joints, centre_x, height, width):
    """Translate a skeleton so that its middle is at centre_x and it fits the image height
    (with some people cut by the frame); integer joint positions (14, 2)."""
    low, high = joints.min(axis=0), joints.max(axis=0)
    free = height - (high[1] - low[1])
    margin = 0.06 * height * (5 if rng.random() < 0.15 else 1)
    top = rng.uniform(min(0.0, free) - margin, max(0.0, free) + margin)
    offset = np.array([centre_x - (low[0] + high[0]) / 2, top - low[1]])
    middle = np.array([width / 2, height / 2]) - (low + high) / 2
    for _ in range(8):  # Move towards the middle until enough joints are in the frame.
        placed = np.rint(joints + offset).astype(int)
        inside = ((placed >= 0) & (placed < [width, height])).all(axis=1)
        if inside.sum() >= 8:
            break
        offset = (offset + middle) / 2
    return placed


def sample_people(rng, height, width):
    """1-6 people at varied scales, in drawing order (far/small first): [(joints, shapes)]."""
    count = int(rng.choice(len(PEOPLE_PROBABILITIES), p=PEOPLE_PROBABILITIES)) + 1
    heights = rng.uniform(0.35, 0.95 - 0.05 * (count - 1), size=count) * height
    slots = rng.permutation(count)
    people = []
    for person_height, slot in zip(heights, slots):
        facing = 1 if rng.random() < 0.75 else -1
        joints = sample_skeleton(rng, person_height, facing)
        joints = _place(rng, joints, width * (slot + rng.uniform(0.1, 0.9)) / count, height, width)
        people.append((joints, person_shapes(joints, sample_style(rng, person_height), facing)))
    order = np.argsort(heights * rng.uniform(0.85, 1.15, size=count), kind="stable")
    return [people[index] for index in order]


def annotate_person(joints, shapes, labels, number):
    """AIC keypoints (42 ints) and box (4 ints) of the person drawn as `number` on labels.

    A joint outside the frame is unlabelled (v = 3, x = y = 0); one whose pixel was painted by a
    later person is occluded (v = 2). The box is everything the shapes cover, clipped to the
    image, so it contains every labelled keypoint.
    """
    height, width = labels.shape
    keypoints = []
    for x, y in joints:
        if 0 <= x < width and 0 <= y < height:
            keypoints += [int(x), int(y), OCCLUDED if labels[y, x] > number else VISIBLE]
        else:
            keypoints += [0, 0, UNLABELLED]
    inside = np.asarray([(x, y) for x, y, v in zip(*[iter(keypoints)] * 3) if v != UNLABELLED])
    x1, y1, x2, y2 = shapes_extent(shapes)
    if inside.size:  # The extent covers the joints already; this only guards rounding.
        x1, y1 = min(x1, inside[:, 0].min()), min(y1, inside[:, 1].min())
        x2, y2 = max(x2, inside[:, 0].max()), max(y2, inside[:, 1].max())
    box = [int(np.clip(math.floor(x1), 0, width - 1)), int(np.clip(math.floor(y1), 0, height - 1)),
           int(np.clip(math.ceil(x2), 0, width - 1)), int(np.clip(math.ceil(y2), 0, height - 1))]
    return keypoints, box


def synthetic_image_id(seed, index):
    """A 40-hex-character id like AIC's, fixed by the seed and the image's index."""
    return hashlib.sha1(f"openpose-aic-synthetic:{seed}:{index}".encode()).hexdigest()


def synthetic_example(seed, index):
    """Draw synthetic image `index` of set `seed`: (image_id, JPEG bytes, AIC annotation).

    A 240..640-pixel image of random aspect ratio with a textured, cluttered background and 1-6
    articulated people drawn back to front, then sensor noise and sometimes a slight blur. All
    randomness comes from a generator seeded with (seed, index) alone.
    """
    rng = np.random.default_rng([seed, index])
    height = int(rng.integers(240, 481))
    width = int(np.clip(round(height * rng.uniform(0.6, 1.6)), 240, 640))
    image = draw_background(rng, height, width)
    labels = np.zeros((height, width), dtype=np.uint8)
    people = sample_people(rng, height, width)
    for number, (_, shapes) in enumerate(people, start=1):
        draw_person(image, labels, shapes, number)
    # Uniform integer sensor noise: several times faster to draw than Gaussian noise.
    amplitude = int(rng.integers(3, 16))
    noise = rng.integers(-amplitude, amplitude + 1, size=image.shape, dtype=np.int16)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    image_id = synthetic_image_id(seed, index)
    annotation = {"image_id": image_id, "keypoint_annotations": {}, "human_annotations": {}}
    for number, (joints, shapes) in enumerate(people, start=1):
        keypoints, box = annotate_person(joints, shapes, labels, number)
        annotation["keypoint_annotations"][f"human{number}"] = keypoints
        annotation["human_annotations"][f"human{number}"] = box
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SYNTHETIC_JPEG_QUALITY])
    return image_id, jpeg.tobytes(), annotation


# --------------------------------------------------------------------------------------------
# Synthetic video: people walking across a still background (tests and benchmarks of tracking).
# --------------------------------------------------------------------------------------------
def walking_people(frames, starts, step, height, seed=0, jitter=0.0):
    """Per frame, float64 (P, NUM_JOINTS, 3) keypoints (x, y, 1) of P people walking.

    starts: (P, 2) neck positions (x, y) in the first frame; step: (P, 2) or (2,) pixels moved
    per frame; height: standing height in pixels. Each person keeps one skeleton of
    sample_skeleton (a translated pose: the easy case of tracking); `jitter` adds Gaussian
    noise (pixels) to every joint, like a network's estimates. Person k of every frame is the
    same person.
    """
    rng = np.random.default_rng(seed)
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    skeletons = np.stack([sample_skeleton(rng, height, 1) for _ in starts]) + starts[:, None]
    step = np.broadcast_to(np.asarray(step, dtype=np.float64), starts.shape)
    sequence = []
    for frame in range(frames):
        people = np.ones(skeletons.shape[:2] + (3,))
        people[:, :, :2] = skeletons + frame * step[:, None]
        people[:, :, :2] += rng.normal(0.0, jitter, size=skeletons.shape)
        sequence.append(people)
    return sequence


def video_frames(sequence, size, seed=0):
    """Yield BGR uint8 frames (size = (height, width)) drawing the people of each element of
    `sequence` (walking_people) over one background, each person in its own clothes."""
    rng = np.random.default_rng(seed)
    background = draw_background(rng, *size)
    height = float(np.ptp(sequence[0][0, :, 1])) if len(sequence[0]) else 1.0
    styles = [sample_style(rng, height) for _ in range(len(sequence[0]))]
    for people in sequence:
        image, labels = background.copy(), np.zeros(size, dtype=np.uint8)
        for number, (person, style) in enumerate(zip(people, styles), start=1):
            draw_person(image, labels, person_shapes(person[:, :2], style, 1), number)
        yield image


# --------------------------------------------------------------------------------------------
# The set on disk.
# --------------------------------------------------------------------------------------------
def split_indices(count):
    """{split: image indices} of a set of `count` images: the last 10 % (at least one) validate."""
    validation = max(1, int(round(count * SYNTHETIC_VAL_FRACTION)))
    return {"train": range(count - validation), "val": range(count - validation, count)}


def marker_text(seed, counts):
    """The marker of a set: a sentence, then `set: seed=S train=N val=M` naming the set."""
    fields = " ".join(f"{split}={count}" for split, count in counts.items())
    return ("Synthetic AIC-format data written by pre-process.py --synthetic (synthetic.py).\n"
            f"set: seed={seed} {fields}\n")


def _listed_splits(text):
    """The splits a marker says its set has."""
    for line in text.splitlines():
        if line.startswith("set:"):
            return {field.split("=")[0] for field in line[4:].split()} - {"seed"}
    return set(SYNTHETIC_SPLITS)  # Markers written before they named the set: both splits.


def check_complete(data_dir):
    """Raise SyntheticError unless the synthetic release folders in data_dir form one whole set.

    Every folder with a marker must carry the same marker, and every split it names must be
    there with it. A run killed while it swaps the folders, or a synthetic split beside a real
    one, fails this: training on it could put validation images into the training split.
    """
    markers = {}
    for split, release in AIC_RELEASES.items():
        path = os.path.join(data_dir, release.folder, SYNTHETIC_MARKER)
        if os.path.isfile(path):
            with open(path, "r", encoding="utf-8") as handle:
                markers[split] = handle.read()
    if not markers:
        return
    expected = set().union(*map(_listed_splits, markers.values()))
    if len(set(markers.values())) > 1 or set(markers) != expected:
        raise SyntheticError(
            f"{data_dir}: its synthetic folders ({', '.join(sorted(markers))}) are not one whole "
            f"set of {', '.join(sorted(expected))}, as an interrupted --synthetic run leaves "
            "them; run pre-process.py --synthetic again")


def _refuse_real_data(data_dir):
    """Raise SyntheticError if writing the set would replace a real release or its zip."""
    for split in SYNTHETIC_SPLITS:
        final = os.path.join(data_dir, AIC_RELEASES[split].folder)
        if os.path.exists(final + ".zip"):
            raise SyntheticError(f"{data_dir} holds the real {os.path.basename(final)}.zip; "
                                 "write synthetic data elsewhere with --data_dir")
        if os.path.exists(final) and not os.path.exists(os.path.join(final, SYNTHETIC_MARKER)):
            raise SyntheticError(f"{final} exists and is not a synthetic set (no "
                                 f"{SYNTHETIC_MARKER}); move it away or choose another --data_dir")


def _draw_split(folder, split, indices, seed, jobs, marker):
    """Write one split's images, annotation file and marker into the new folder `folder`."""
    release = AIC_RELEASES[split]
    images_dir = os.path.join(folder, release.images)
    os.makedirs(images_dir)

    def make(index):
        image_id, jpeg, annotation = synthetic_example(seed, index)
        with open(os.path.join(images_dir, image_id + ".jpg"), "wb") as handle:
            handle.write(jpeg)
        return annotation

    # map_ordered keeps the indices' order: the annotation file does not depend on the threads.
    annotations = utils.map_ordered(make, indices, jobs, f"synthetic {split}")
    with open(os.path.join(folder, release.annotations), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(annotations))
    with open(os.path.join(folder, SYNTHETIC_MARKER), "w", encoding="utf-8") as handle:
        handle.write(marker)


def _swap_in(data_dir, staging, folders):
    """Move the old set's folders aside, then rename the new ones from `staging` into place.

    Only renames happen here, so the window in which a kill leaves a mix is a few milliseconds,
    and check_complete refuses what such a kill leaves.
    """
    retired = tempfile.mkdtemp(prefix=".tmp-retired-", dir=data_dir)
    for folder in folders:
        if os.path.lexists(os.path.join(data_dir, folder)):
            os.rename(os.path.join(data_dir, folder), os.path.join(retired, folder))
    for folder in folders:
        os.rename(os.path.join(staging, folder), os.path.join(data_dir, folder))
    shutil.rmtree(retired)
    os.rmdir(staging)


def write_synthetic(data_dir, count, seed, jobs=1):
    """Write a set of `count` images under data_dir, replacing an earlier synthetic set whole.

    Both splits are drawn into one hidden staging folder first, so a run killed while drawing
    leaves the old set as it was (and a .tmp-* folder that the next run deletes). Raises
    SyntheticError before writing anything if real data is in the way. Returns {split: folder}.
    """
    if count < 2:
        raise SyntheticError("--synthetic needs at least 2 images (train and validation)")
    indices = split_indices(count)
    os.makedirs(data_dir, exist_ok=True)
    utils.remove_leftovers(data_dir)
    _refuse_real_data(data_dir)
    marker = marker_text(seed, {split: len(chosen) for split, chosen in indices.items()})
    staging = tempfile.mkdtemp(prefix=".tmp-synthetic-", dir=data_dir)
    folders = {split: AIC_RELEASES[split].folder for split in indices}
    try:
        for split, chosen in indices.items():
            _draw_split(os.path.join(staging, folders[split]), split, chosen, seed, jobs, marker)
    except Exception:  # An error (not a kill) cleans up at once.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(data_dir, staging, list(folders.values()))
    return {split: os.path.join(data_dir, folder) for split, folder in folders.items()}
