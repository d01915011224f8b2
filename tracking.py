"""Following people through a video: ids by keypoint similarity, and One-Euro smoothing.

Tracker.update(people, time) takes the people found in one frame, float (N, NUM_JOINTS, 3) of
(x, y, score) in pixels (score 0: joint missing), and returns their track ids and their
keypoints, smoothed over time when asked. A detection continues the track it resembles most:
each track's keypoints are moved on by the track's last velocity, their similarity to every
detection is the object keypoint similarity (OKS) of the AI Challenger metric with its
per-keypoint tolerances widened cfg.track_oks_scale times (people move between frames), and
tracks and detections are paired by the Hungarian algorithm (scipy's linear_sum_assignment), a
pair counting only when its OKS is at least cfg.track_min_oks. Unpaired detections start new tracks;
a track that goes unpaired for more than cfg.track_max_missed frames in a row is retired, so a
person missed in a frame or two keeps their id. Smoothing is the One-Euro filter (Casiez, Roussel
and Vogel, CHI 2012): a low-pass filter whose cutoff rises with speed, which removes jitter at
rest and lags little on fast moves.

NumPy and SciPy only (no TensorFlow). Coordinates are (x, y) pixels throughout.
"""

from __future__ import annotations

import math

import numpy as np

# The AI Challenger metric's per-keypoint constants (NumPy-only module, no TensorFlow).
from aic_metric import OKS_DELTAS
from config import NUM_JOINTS

# Joints found in both frames that a velocity estimate needs.
MIN_VELOCITY_JOINTS = 3


def keypoint_similarity(first, second, scale=1.0):
    """OKS of every pair of people: float64 (len(first), len(second)).

    first, second: (N, NUM_JOINTS, 3) and (M, NUM_JOINTS, 3) of (x, y, score), score 0 where a
    joint is missing. As the AI Challenger metric, exp(-d^2 / 2 / delta_k^2 / (area + 1)),
    where delta_k is the metric's constant times `scale` and area is that of the box around the
    found joints of the person of `first` (the track); averaged over the joints found in either
    person, a joint found in only one counting 0, so that a fragment of a person (a few joints
    the parser split off) resembles the whole person less than the person's own track does.
    0 for pairs with no joint in common.
    """
    first = np.asarray(first, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
    second = np.asarray(second, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
    found_first, found_second = first[:, :, 2] > 0, second[:, :, 2] > 0
    low = np.where(found_first[:, :, None], first[:, :, :2], np.inf).min(axis=1)
    high = np.where(found_first[:, :, None], first[:, :, :2], -np.inf).max(axis=1)
    extent = np.where(np.isfinite(high - low), high - low, 0.0)
    area = extent[:, 0] * extent[:, 1]  # (N,)
    distance2 = ((first[:, None, :, :2] - second[None, :, :, :2]) ** 2).sum(axis=3)
    deltas = OKS_DELTAS * float(scale)
    terms = np.exp(-distance2 / 2.0 / deltas ** 2 / (area[:, None, None] + 1.0))
    common = found_first[:, None, :] & found_second[None, :, :]
    either = (found_first[:, None, :] | found_second[None, :, :]).sum(axis=2)
    return np.where(common.any(axis=2), (terms * common).sum(axis=2) / np.maximum(either, 1),
                    0.0)


def _smoothing_factor(cutoff, elapsed):
    """The exponential smoothing factor of a low-pass filter at `cutoff` Hz over `elapsed` s."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / elapsed)


class OneEuroFilter:
    """One-Euro filter of a person's keypoints (NUM_JOINTS, 2), each joint on its own.

    min_cutoff (Hz): cutoff at rest; beta: cutoff increase per pixel/s of the joint's speed;
    derivative_cutoff (Hz): cutoff of the speed estimate. A joint missing from a frame is not
    filtered, and one that reappears starts afresh (its old position is no guide).
    """

    def __init__(self, min_cutoff, beta, derivative_cutoff):
        self.min_cutoff, self.beta = float(min_cutoff), float(beta)
        self.derivative_cutoff = float(derivative_cutoff)
        self.value = np.zeros((NUM_JOINTS, 2))
        self.speed = np.zeros((NUM_JOINTS, 2))
        self.known = np.zeros(NUM_JOINTS, dtype=bool)
        self.time = None

    def __call__(self, xy, found, time):
        """Filtered (NUM_JOINTS, 2) of xy (NUM_JOINTS, 2) at `time` seconds; found (NUM_JOINTS,)
        bool marks the joints present (the others come back unchanged)."""
        xy, found = np.asarray(xy, dtype=np.float64), np.asarray(found, dtype=bool)
        elapsed = None if self.time is None else time - self.time
        continuing = found & self.known & (elapsed is not None and elapsed > 0)
        result = xy.copy()
        if continuing.any():
            speed = (xy - self.value) / elapsed
            factor = _smoothing_factor(self.derivative_cutoff, elapsed)
            speed = factor * speed + (1.0 - factor) * self.speed
            cutoff = self.min_cutoff + self.beta * np.hypot(speed[:, 0], speed[:, 1])
            factor = _smoothing_factor(cutoff, elapsed)[:, None]
            smoothed = factor * xy + (1.0 - factor) * self.value
            result[continuing] = smoothed[continuing]
            self.speed[continuing] = speed[continuing]
        restarted = found & ~continuing
        self.speed[restarted] = 0.0
        self.value[found] = result[found]
        self.known = found.copy()
        self.time = time
        return result


class Track:
    """One person followed through the video: id, last keypoints (NUM_JOINTS, 3), the time
    they were seen, velocity (pixels/s, (2,)), frames missed since, and its filter."""

    def __init__(self, track_id, person, time, smoother):
        self.id, self.person, self.time = track_id, person.copy(), time
        self.velocity, self.missed, self.smoother = np.zeros(2), 0, smoother

    def predicted(self, time):
        """The last keypoints moved on by the velocity to `time` (missing joints stay 0)."""
        person = self.person.copy()
        found = person[:, 2] > 0
        person[found, :2] += self.velocity * (time - self.time)
        return person

    def follow(self, person, time):
        """Continue with a matched detection. The velocity is the median move per second of
        the joints found in both (at least MIN_VELOCITY_JOINTS), averaged with the previous
        one: a detection missing most joints, or one joint found in the wrong place, then
        cannot throw the prediction off."""
        common = (person[:, 2] > 0) & (self.person[:, 2] > 0)
        if common.sum() >= MIN_VELOCITY_JOINTS and time > self.time:
            move = np.median(person[common, :2] - self.person[common, :2], axis=0)
            self.velocity = 0.5 * (self.velocity + move / (time - self.time))
        self.person, self.time, self.missed = person.copy(), time, 0


class Tracker:
    """Ids for the people of consecutive frames (see the module docstring).

    cfg: a Config (track_min_oks, track_oks_scale, track_max_missed, temporal_smoothing and
    the one_euro_* fields). Ids start at 1 and are never reused.
    """

    def __init__(self, cfg):
        self.cfg, self.tracks, self.next_id = cfg, [], 1

    def _new_filter(self):
        if not self.cfg.temporal_smoothing:
            return None
        return OneEuroFilter(self.cfg.one_euro_min_cutoff, self.cfg.one_euro_beta,
                             self.cfg.one_euro_derivative_cutoff)

    def _pairs(self, people, time):
        """[(track index, person index)] of the Hungarian pairing with OKS >= track_min_oks."""
        from scipy.optimize import linear_sum_assignment

        if not self.tracks or not len(people):
            return []
        predicted = np.stack([track.predicted(time) for track in self.tracks])
        similarity = keypoint_similarity(predicted, people, self.cfg.track_oks_scale)
        rows, columns = linear_sum_assignment(similarity, maximize=True)
        keep = similarity[rows, columns] >= self.cfg.track_min_oks
        return list(zip(rows[keep].tolist(), columns[keep].tolist()))

    def update(self, people, time):
        """(ids (N,) int64, keypoints float32 (N, NUM_JOINTS, 3)) of one frame's people, in
        the order given; keypoints are One-Euro smoothed when cfg.temporal_smoothing.

        people: (N, NUM_JOINTS, 3) of (x, y, score) in pixels; time: the frame's time in
        seconds (increasing).
        """
        people = np.asarray(people, dtype=np.float64).reshape(-1, NUM_JOINTS, 3)
        owner = [-1] * len(people)
        for track_index, person_index in self._pairs(people, time):
            owner[person_index] = track_index
        matched = set(owner)
        for index, track in enumerate(self.tracks):
            if index not in matched:
                track.missed += 1
        for person_index, person in enumerate(people):
            if owner[person_index] < 0:
                self.tracks.append(Track(self.next_id, person, time, self._new_filter()))
                self.next_id += 1
                owner[person_index] = len(self.tracks) - 1
            else:
                self.tracks[owner[person_index]].follow(person, time)
        result = self._outputs(people, owner, time)
        self.tracks = [track for track in self.tracks
                       if track.missed <= self.cfg.track_max_missed]
        return result

    def _outputs(self, people, owner, time):
        ids = np.array([self.tracks[index].id for index in owner], dtype=np.int64)
        smoothed = people.astype(np.float32)
        for person_index, track_index in enumerate(owner):
            smoother = self.tracks[track_index].smoother
            if smoother is not None:
                found = people[person_index, :, 2] > 0
                smoothed[person_index, :, :2] = smoother(people[person_index, :, :2], found,
                                                         time)
        return ids, smoothed


def id_switches(assignments):
    """Identity switches of a tracker against the truth (the MOT benchmarks' count).

    assignments: one dict per frame, {true person: track id given to it}, people missed in a
    frame left out. A switch is a true person getting another id than the one it last had.
    """
    last, switches = {}, 0
    for frame in assignments:
        for person, track_id in frame.items():
            if person in last and last[person] != track_id:
                switches += 1
            last[person] = track_id
    return switches
