"""Tests of aic_metric.py, the official AI Challenger mAP: hand-computed cases for each of the
official evaluator's rules (integer division and duplicate entries included), robustness to
malformed input, a plain-loop re-implementation, and an import with TensorFlow hidden."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import aic_metric
import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ladder(x0, y0, visibility=1):
    """A person as 42 numbers: 14 keypoints on a two-column ladder starting at (x0, y0)."""
    values = []
    for k in range(14):
        values += [x0 + 10 * (k % 2), y0 + 10 * (k // 2), visibility]
    return values


def record(image_id, people):
    """A reference record from {name: (keypoint list, box)}."""
    return {"image_id": image_id,
            "keypoint_annotations": {name: kps for name, (kps, _) in people.items()},
            "human_annotations": {name: box for name, (_, box) in people.items()}}


def prediction(image_id, people):
    return {"image_id": image_id, "keypoint_annotations": dict(people)}


def two_image_reference():
    return [record("a", {"human1": (ladder(10, 10), [0, 0, 40, 90]),
                         "human2": (ladder(200, 10), [190, 0, 230, 90])}),
            record("b", {"human1": (ladder(50, 50), [40, 40, 80, 130])})]


def test_perfect_prediction_scores_one():
    references = two_image_reference()
    predictions = [prediction("a", {"p1": ladder(200, 10), "p2": ladder(10, 10)}),
                   prediction("b", {"p1": ladder(50, 50)})]
    result = aic_metric.aic_map(predictions, references)
    assert result["score"] == 1.0
    assert all(ap == 1.0 for ap in result["per_threshold"].values())
    assert result["per_keypoint"] == [1.0] * 14
    assert (result["missed_people"], result["spurious_people"]) == (0, 0)
    assert (result["num_gt"], result["num_pred"], result["denominator"]) == (3, 3, 3)
    assert result["warnings"] == []


def test_one_keypoint_off_gives_hand_computed_oks():
    # Two counted keypoints (right shoulder and neck); the shoulder is off by (3, 4), d^2 = 25.
    # Box 100 wide, 200 high: s + 1 = 20001; delta_0 = 2 * 0.01388152 = 0.02776304.
    # term_0 = exp(-25 / (2 * 0.02776304^2 * 20001)) = exp(-25 / 30.8329971744)
    #        = exp(-0.8108196507) = 0.4444935874; term_13 = exp(0) = 1.
    # OKS = (0.4444935874 + 1) / 2 = 0.7222467937: above 0.50 .. 0.70, not above 0.75 .. 0.95.
    gt = [0.0] * 42
    gt[0:3] = [50, 60, 1]
    gt[39:42] = [50, 30, 1]
    guess = list(gt)
    guess[0:2] = [53, 64]
    references = [record("x", {"human1": (gt, [0, 0, 100, 200])})]
    result = aic_metric.aic_map([prediction("x", {"p": guess})], references)
    expected_oks = (math.exp(-25 / (2 * 0.02776304 ** 2 * 20001)) + 1) / 2
    assert expected_oks == pytest.approx(0.7222467937, abs=1e-9)
    ground_truth = aic_metric.parse_references(references)
    submission = aic_metric.parse_predictions([prediction("x", {"p": guess})], ["x"], [])
    best_oks, best_pred = aic_metric.best_matches(ground_truth, submission)
    assert best_oks[0] == pytest.approx(expected_oks, rel=1e-12)
    assert best_pred.tolist() == [0]
    passed = [t for t in np.linspace(0.5, 0.95, 10) if expected_oks > t]
    assert len(passed) == 5
    assert result["score"] == pytest.approx(len(passed) / 10)
    assert result["ap50"] == 1.0 and result["ap75"] == 0.0
    # The shoulder's own term 0.44 is below 0.5, the neck's is 1: per-keypoint accuracy.
    assert result["per_keypoint"][0] == 0.0 and result["per_keypoint"][13] == 1.0
    assert result["per_keypoint"][5] is None


def test_spurious_person_lowers_score_through_the_denominator():
    references = two_image_reference()
    predictions = [prediction("a", {"p1": ladder(10, 10), "p2": ladder(200, 10),
                                    "extra": ladder(500, 500)}),
                   prediction("b", {"p1": ladder(50, 50)})]
    result = aic_metric.aic_map(predictions, references)
    # Image a adds max(2 gt, 3 predicted) = 3, image b adds 1: every threshold gives 3 / 4.
    assert result["denominator"] == 4
    assert result["score"] == pytest.approx(0.75, abs=1e-15)
    assert result["spurious_people"] == 1 and result["missed_people"] == 0


def test_missing_image_adds_zeros_and_warns():
    references = two_image_reference()
    result = aic_metric.aic_map([prediction("a", {"p1": ladder(10, 10), "p2": ladder(200, 10)})],
                              references)
    # Two of three people found, image b adds its one person to the denominator.
    assert result["score"] == pytest.approx(2 / 3, abs=1e-15)
    assert "b is not in the prediction JSON file." in result["warnings"]
    assert result["missing_images"] == 1 and result["missed_people"] == 1


def test_image_with_no_predicted_people_counts_its_ground_truth():
    references = two_image_reference()
    predictions = [prediction("a", {}), prediction("b", {"p1": ladder(50, 50)})]
    result = aic_metric.aic_map(predictions, references)
    assert result["denominator"] == 3
    assert result["score"] == pytest.approx(1 / 3, abs=1e-15)
    assert result["missing_images"] == 0


def test_only_visible_keypoints_count():
    occluded = ladder(10, 10)
    for k in (2, 5, 8):
        occluded[3 * k + 2] = 2 if k != 8 else 3
    guess = ladder(10, 10)
    for k in (2, 5, 8):
        guess[3 * k:3 * k + 2] = [900, 900]
    references = [record("v", {"human1": (occluded, [0, 0, 40, 90])})]
    assert aic_metric.aic_map([prediction("v", {"p": guess})], references)["score"] == 1.0
    # A person with no v == 1 keypoint has OKS 0 even against a perfect guess.
    hidden = ladder(10, 10, visibility=2)
    references = [record("h", {"human1": (hidden, [0, 0, 40, 90])})]
    result = aic_metric.aic_map([prediction("h", {"p": hidden})], references)
    assert result["score"] == 0.0 and result["missed_people"] == 1


def test_jpg_suffix_is_stripped():
    references = [record("abc", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    result = aic_metric.aic_map([prediction("abc.jpg", {"p": ladder(10, 10)})], references)
    assert result["score"] == 1.0 and result["warnings"] == []


def test_confidence_values_are_ignored():
    references = [record("c", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    guess = ladder(10, 10)
    guess[2::3] = [None] * 7 + ["high"] * 7
    result = aic_metric.aic_map([prediction("c", {"p": guess})], references)
    assert result["score"] == 1.0 and result["warnings"] == []


MALFORMED_PEOPLE = {
    "short": ladder(10, 10)[:41],
    "string": ["1"] + ladder(10, 10)[1:],
    "none": [None] + ladder(10, 10)[1:],
    "nan": [float("nan")] + ladder(10, 10)[1:],
    "infinity": ladder(10, 10)[:3] + [float("inf")] + ladder(10, 10)[4:],
    "huge_int": [10 ** 400] + ladder(10, 10)[1:],
    "boolean": [True] + ladder(10, 10)[1:],
    "dict": {"x": 1},
    "string_list": "1, 2, 3",
    "nested": [ladder(10, 10)[i:i + 3] for i in range(0, 42, 3)],
}


@pytest.mark.parametrize("case", sorted(MALFORMED_PEOPLE))
def test_malformed_person_warns_and_counts_as_no_prediction(case):
    references = two_image_reference()
    predictions = [prediction("a", {"bad": MALFORMED_PEOPLE[case], "p1": ladder(10, 10)}),
                   prediction("b", {"p1": ladder(50, 50)})]
    result = aic_metric.aic_map(predictions, references)
    assert result["num_pred"] == 2
    assert any(w.startswith("a bad:") for w in result["warnings"]), result["warnings"]
    # Person a/human2 is missed; the malformed one adds nothing to the denominator.
    assert result["denominator"] == 3
    assert result["score"] == pytest.approx(2 / 3, abs=1e-15)


MALFORMED_ENTRIES = {
    "not_an_object": (["a", 3], "prediction entry 0 is not an object"),
    "no_image_id": ({"keypoint_annotations": {}}, "prediction entry 0 has no key 'image_id'"),
    "image_id_not_string": ({"image_id": 7, "keypoint_annotations": {}}, "is not a string"),
    "no_keypoints": ({"image_id": "a"}, "a does not have key 'keypoint_annotations'"),
    "keypoints_not_object": ({"image_id": "a", "keypoint_annotations": [ladder(10, 10)]},
                             "a: 'keypoint_annotations' is not an object"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_ENTRIES))
def test_malformed_entry_warns_and_is_skipped(case):
    entry, message = MALFORMED_ENTRIES[case]
    references = two_image_reference()
    result = aic_metric.aic_map([entry, prediction("b", {"p1": ladder(50, 50)})], references)
    assert any(message in warning for warning in result["warnings"]), result["warnings"]
    # Image a's two people count as unfound whichever way the entry was dropped.
    assert result["denominator"] == 3
    assert result["score"] == pytest.approx(1 / 3, abs=1e-15)


@pytest.mark.parametrize("broken, message", [
    ({"image_id": "a", "keypoint_annotations": {"h": ladder(0, 0)}, "human_annotations": {}},
     "reference record 0 (a) h: needs a human_annotations box"),
    ({"image_id": "a", "keypoint_annotations": {"h": ladder(0, 0)[:40]},
      "human_annotations": {"h": [0, 0, 1, 1]}}, "reference record 0 (a) h: keypoints must be"),
    ({"keypoint_annotations": {}, "human_annotations": {}}, "reference record 0: missing"),
    ({"image_id": "a", "keypoint_annotations": {"h": [float("nan")] * 42},
      "human_annotations": {"h": [0, 0, 1, 1]}}, "reference record 0 (a) h: numbers must be"),
    ("text", "reference record 0: expected an object"),
])
def test_malformed_reference_is_an_error_naming_the_record(broken, message):
    pattern = message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(aic_metric.InputError, match=pattern):
        aic_metric.aic_map([], [broken])


def test_official_mean_is_bit_identical_to_numpy_mean():
    rng = np.random.default_rng(3)
    terms = np.exp(-rng.random((4000, 14)) * rng.random((4000, 1)) * 5)
    counted = rng.random((4000, 14)) < rng.random((4000, 1))
    means = aic_metric.official_mean(terms, counted)
    expected = [np.mean(row[mask]) if mask.any() else 0.0 for row, mask in zip(terms, counted)]
    assert np.array_equal(means, np.asarray(expected))


# ------------------------------------------------------------------------------ integer division
def neck_only(x, y):
    """42 integers: only the neck (keypoint 13) labelled, visible, at (x, y)."""
    values = [0] * 42
    values[39:42] = [x, y, 1]
    return values


NECK_BOX = [0, 0, 100, 200]  # s + 1 = 20001


def test_integer_arrays_floor_divide_half_the_squared_distance():
    # Neck only, off by (1, 2): d^2 = 5. delta_13 = 2 * 0.01236173; delta^2 * (s + 1) =
    # 0.000611249... * 20001 = 12.2256007. True division: exp(-2.5 / 12.2256007) = 0.81506;
    # Python 2 with two integer arrays: -5 / 2 = -3, exp(-3 / 12.2256007) = 0.78240.
    # OKS 0.81506 is above 0.50 .. 0.80 (7 of 10 thresholds), 0.78240 above 0.50 .. 0.75 (6).
    references = [record("n", {"human1": (neck_only(50, 30), NECK_BOX)})]
    integer_guess = neck_only(51, 32)
    assert aic_metric.aic_map([prediction("n", {"p": integer_guess})],
                              references)["score"] == pytest.approx(0.6)
    float_guess = list(integer_guess)
    float_guess[39] = 51.0  # one float makes the whole predicted array a float array
    assert aic_metric.aic_map([prediction("n", {"p": float_guess})],
                              references)["score"] == pytest.approx(0.7)
    confidence_guess = list(integer_guess)
    confidence_guess[41] = 0.9  # the third values count for the array's type too
    assert aic_metric.aic_map([prediction("n", {"p": confidence_guess})],
                              references)["score"] == pytest.approx(0.7)
    float_reference = neck_only(50, 30)
    float_reference[0] = 0.0  # a float in the ground truth: true division as well
    assert aic_metric.aic_map([prediction("n", {"p": integer_guess})],
                              [record("n", {"human1": (float_reference, NECK_BOX)})]
                              )["score"] == pytest.approx(0.7)


def test_keypoint_terms_floor_only_odd_squared_distances_of_integer_pairs():
    gt = np.zeros((2, 14, 3))
    pred = np.zeros((2, 14, 2))
    pred[:, 0] = (1.0, 2.0)  # d^2 = 5 (odd)
    pred[:, 1] = (2.0, 2.0)  # d^2 = 8 (even)
    area_plus_one = np.full(2, 20001, dtype=np.float32)
    terms = aic_metric.keypoint_terms(gt, area_plus_one, pred, np.array([True, False]))
    scale = aic_metric.OKS_DELTAS[:2] ** 2 * 20001.0
    np.testing.assert_allclose(terms[0, :2], np.exp(np.array([-3.0, -4.0]) / scale), rtol=1e-15)
    np.testing.assert_allclose(terms[1, :2], np.exp(np.array([-2.5, -4.0]) / scale), rtol=1e-15)
    assert terms[0, 1] == terms[1, 1]  # an even d^2 divides exactly either way


def test_parsed_people_record_whether_the_official_array_would_be_integer():
    references = [record("n", {"h1": (neck_only(5, 5), NECK_BOX),
                               "h2": ([float(v) for v in neck_only(5, 5)], NECK_BOX)})]
    assert aic_metric.parse_references(references).integer.tolist() == [True, False]
    with_text_confidence = neck_only(1, 1)
    with_text_confidence[2] = "high"  # the official crashes here; the numbers decide
    people = {"int": neck_only(1, 1), "float": [1.5] + neck_only(1, 1)[1:],
              "numpy": [np.int64(v) for v in neck_only(1, 1)], "text": with_text_confidence}
    submission = aic_metric.parse_predictions([prediction("n", people)], ["n"], [])
    assert submission.integer.tolist() == [True, False, True, True]


# ------------------------------------------------------------------------------ duplicates
def duplicate_case(*image_ids):
    """Score of entries with these image_ids, the first perfect and the others far off."""
    references = [record("d", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    people = [{"p": ladder(10, 10)}] + [{"p": ladder(300, 0)}] * (len(image_ids) - 1)
    result = aic_metric.aic_map([prediction(image_id, person)
                                 for image_id, person in zip(image_ids, people)], references)
    return result["score"], result["warnings"]


def test_duplicate_image_id_last_entry_counts_with_a_warning():
    score, warnings = duplicate_case("d", "d")
    assert score == 0.0  # the official's dictionary keeps the last entry
    assert warnings == ["d is duplicated in prediction JSON file; entry 1 (d) counts."]
    assert duplicate_case("d", "d", "d")[0] == 0.0
    assert len(duplicate_case("d", "d", "d")[1]) == 2


def test_duplicate_with_and_without_extension_scores_the_entry_without():
    # The official looks the image up as "d", so the entry written "d" counts even when an
    # entry "d.jpg" comes after it.
    score, warnings = duplicate_case("d", "d.jpg")
    assert score == 1.0
    assert warnings == ["d.jpg is duplicated in prediction JSON file; entry 0 (d) counts."]
    assert duplicate_case("d.jpg", "d")[0] == 0.0  # here "d" is the far-off second entry


def test_duplicates_that_all_have_an_extension_keep_the_last():
    # The official crashes on these; the project cuts the extension and keeps the last entry.
    assert duplicate_case("d.jpg", "d.png")[0] == 0.0
    assert duplicate_case("d.jpg")[0] == 1.0


def test_skipped_entries_replace_nothing():
    references = [record("d", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    result = aic_metric.aic_map([prediction("d", {"p": ladder(10, 10)}), {"image_id": "d"}],
                                references)
    assert result["score"] == 1.0
    assert result["warnings"] == ["d does not have key 'keypoint_annotations'; skipped."]


# ------------------------------------------------------------------------------ the plain loop
def official_loop_score(predictions, references):
    """The metric as the official's per-image loop, with NumPy typing the arrays: an integer
    array floor-divides -d^2 by 2, as Python 2 did. The entry that counts for an image is the
    last one written without an extension, else the last one (the project's choice)."""
    deltas = 2 * np.asarray(config.AIC_OKS_SIGMAS)
    by_written_id, last_by_image = {}, {}
    for entry in predictions:
        by_written_id[entry["image_id"]] = entry["keypoint_annotations"]
        last_by_image[entry["image_id"].split(".")[0]] = entry["keypoint_annotations"]
    values, denominator = [], 0
    for ref in references:
        image_id = ref["image_id"]
        present = image_id in last_by_image
        guesses = list(by_written_id.get(image_id, last_by_image.get(image_id, {})).values())
        for name, keypoints in ref["keypoint_annotations"].items():
            gt = np.reshape(keypoints, (14, 3))
            counted = gt[:, 2] == 1
            box = ref["human_annotations"][name]
            scale = np.float32((box[3] - box[1]) * (box[2] - box[0]))
            oks = []
            for guess in guesses:
                squared = np.sum((gt[counted, :2] - np.reshape(guess, (14, 3))[counted, :2]) ** 2,
                                 axis=1)
                halved = -squared // 2 if squared.dtype.kind == "i" else -squared / 2
                oks.append(np.mean(np.exp(halved / deltas[counted] ** 2 / (scale + 1)))
                           if counted.any() else 0.0)
            values.append(max(oks, default=0.0))
        denominator += (max(len(ref["keypoint_annotations"]), len(guesses)) if present
                        else len(ref["human_annotations"]))
    values = np.asarray(values)
    return np.mean([np.sum(values > t) / np.float32(denominator)
                    for t in np.linspace(0.5, 0.95, 10)])


def random_guesses(rng, people):
    """Noisy copies of the people (some rounded to integers, some floats) and spurious ones."""
    guesses = {}
    for name, (keypoints, _) in people.items():
        noisy = np.asarray(keypoints, dtype=np.float64) + rng.normal(0, 4, size=42)
        guesses[name] = np.rint(noisy).astype(int).tolist() if rng.random() < 0.5 \
            else noisy.tolist()
    for extra in range(rng.integers(0, 2)):
        guesses[f"extra{extra}"] = rng.uniform(0, 400, size=42).tolist()
    return guesses


def random_data(rng, images=40):
    references, predictions = [], []
    for index in range(images):
        people = {}
        for p in range(rng.integers(0, 4)):
            keypoints = rng.integers(0, 400, size=(14, 3))
            keypoints[:, 2] = rng.integers(1, 4, size=14)
            x1, y1 = rng.integers(0, 200, size=2)
            people[f"human{p + 1}"] = (keypoints.reshape(-1).tolist(),
                                       [int(x1), int(y1), int(x1 + rng.integers(1, 300)),
                                        int(y1 + rng.integers(1, 300))])
        references.append(record(f"img{index}", people))
        for _ in range(1 + (rng.random() < 0.3)):  # some images twice: duplicates
            written = f"img{index}" + (".jpg" if rng.random() < 0.5 else "")
            if rng.random() > 0.1:
                predictions.append(prediction(written, random_guesses(rng, people)))
    return predictions, references


def test_vectorised_score_equals_plain_loop(monkeypatch):
    rng = np.random.default_rng(11)
    predictions, references = random_data(rng)
    expected = official_loop_score(predictions, references)
    assert aic_metric.aic_map(predictions, references)["score"] == expected
    # Tiny chunks exercise the chunked pairing; the result must not change at all.
    ground_truth = aic_metric.parse_references(references)
    submission = aic_metric.parse_predictions(predictions, ground_truth.image_ids, [])
    whole = aic_metric.best_matches(ground_truth, submission)
    monkeypatch.setattr(aic_metric, "MAX_PAIRS_PER_CHUNK", 3)
    chunked = aic_metric.best_matches(ground_truth, submission)
    assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])
    assert aic_metric.aic_map(predictions, references)["score"] == expected


# ------------------------------------------------------------------------------ no TensorFlow
BLOCKED_IMPORT_SCRIPT = """
import sys

class Blocker:
    # Refuses the heavy libraries, so that importing one of them fails loudly.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "cv2", "scipy", "tqdm"):
            raise ImportError("blocked: " + name)
        return None

sys.meta_path.insert(0, Blocker())
import aic_metric
person = [10, 20, 1] * 14
result = aic_metric.aic_map(
    [{"image_id": "a.jpg", "keypoint_annotations": {"p": person}}],
    [{"image_id": "a", "keypoint_annotations": {"h": person},
      "human_annotations": {"h": [0, 0, 50, 50]}}])
print(result["score"], sorted(name for name in sys.modules if name.split(".")[0] in
      ("tensorflow", "keras", "cv2", "scipy")))
"""


def test_the_metric_imports_and_runs_without_tensorflow():
    completed = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT_SCRIPT], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["1.0", "[]"]


# ------------------------------------------------------------------------------ huge junk
def test_many_skipped_entries_are_summarised_after_the_first_hundred():
    # A 50 MB file of "{}" would otherwise give 25 million warnings (gigabytes of --json).
    limit = aic_metric.MAX_ENTRY_WARNINGS
    predictions = [{}] * (limit + 150) + [7] * 3 + [prediction("a", {"p": ladder(10, 10)})]
    references = [record("a", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    result = aic_metric.aic_map(predictions, references)
    assert result["score"] == 1.0
    warnings = result["warnings"]
    assert len(warnings) == limit + 3 + 1
    assert warnings[0] == "prediction entry 0 has no key 'image_id'; skipped."
    assert warnings[limit - 1] == f"prediction entry {limit - 1} has no key 'image_id'; skipped."
    assert warnings[limit] == f"prediction entry {limit + 150} is not an object; skipped."
    assert warnings[-1] == ("... and 150 more prediction entries skipped for the same reason "
                            "(no_image_id).")


def test_a_list_without_any_entry_object_is_refused_and_an_empty_one_scores_zero():
    references = [record("a", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    with pytest.raises(aic_metric.InputError, match=r"list of 2 entries and none is an "
                                                    r"\{image_id, keypoint_annotations\} object"):
        aic_metric.aic_map([ladder(10, 10), ladder(20, 20)], references)
    result = aic_metric.aic_map([], references)
    assert (result["score"], result["denominator"], result["missing_images"]) == (0.0, 1, 1)
