"""Tests for evaluate.py: the official AI Challenger mAP on hand-computed cases, robustness to
malformed input, the command line, and the model/oracle modes on tiny data."""

import json
import math
import os
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest

import config
import evaluate

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "evaluate")
REFERENCE_SMALL = os.path.join(DATA, "reference_small.json")
PREDICTIONS_SMALL = os.path.join(DATA, "predictions_small.json")
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


# ------------------------------------------------------------------------------ the metric
def test_perfect_prediction_scores_one():
    references = two_image_reference()
    predictions = [prediction("a", {"p1": ladder(200, 10), "p2": ladder(10, 10)}),
                   prediction("b", {"p1": ladder(50, 50)})]
    result = evaluate.aic_map(predictions, references)
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
    result = evaluate.aic_map([prediction("x", {"p": guess})], references)
    expected_oks = (math.exp(-25 / (2 * 0.02776304 ** 2 * 20001)) + 1) / 2
    assert expected_oks == pytest.approx(0.7222467937, abs=1e-9)
    ground_truth = evaluate.parse_references(references)
    submission = evaluate.parse_predictions([prediction("x", {"p": guess})], ["x"], [])
    best_oks, best_pred = evaluate.best_matches(ground_truth, submission)
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
    result = evaluate.aic_map(predictions, references)
    # Image a adds max(2 gt, 3 predicted) = 3, image b adds 1: every threshold gives 3 / 4.
    assert result["denominator"] == 4
    assert result["score"] == pytest.approx(0.75, abs=1e-15)
    assert result["spurious_people"] == 1 and result["missed_people"] == 0


def test_missing_image_adds_zeros_and_warns():
    references = two_image_reference()
    result = evaluate.aic_map([prediction("a", {"p1": ladder(10, 10), "p2": ladder(200, 10)})],
                              references)
    # Two of three people found, image b adds its one person to the denominator.
    assert result["score"] == pytest.approx(2 / 3, abs=1e-15)
    assert "b is not in the prediction JSON file." in result["warnings"]
    assert result["missing_images"] == 1 and result["missed_people"] == 1


def test_image_with_no_predicted_people_counts_its_ground_truth():
    references = two_image_reference()
    predictions = [prediction("a", {}), prediction("b", {"p1": ladder(50, 50)})]
    result = evaluate.aic_map(predictions, references)
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
    assert evaluate.aic_map([prediction("v", {"p": guess})], references)["score"] == 1.0
    # A person with no v == 1 keypoint has OKS 0 even against a perfect guess.
    hidden = ladder(10, 10, visibility=2)
    references = [record("h", {"human1": (hidden, [0, 0, 40, 90])})]
    result = evaluate.aic_map([prediction("h", {"p": hidden})], references)
    assert result["score"] == 0.0 and result["missed_people"] == 1


def test_jpg_suffix_is_stripped():
    references = [record("abc", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    result = evaluate.aic_map([prediction("abc.jpg", {"p": ladder(10, 10)})], references)
    assert result["score"] == 1.0 and result["warnings"] == []


def test_duplicate_image_id_first_entry_counts():
    references = [record("d", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    good, bad = prediction("d", {"p": ladder(10, 10)}), prediction("d.jpg", {"p": ladder(300, 0)})
    first_good = evaluate.aic_map([good, bad], references)
    assert first_good["score"] == 1.0
    assert any("duplicated" in warning for warning in first_good["warnings"])
    assert evaluate.aic_map([bad, good], references)["score"] == 0.0


def test_confidence_values_are_ignored():
    references = [record("c", {"human1": (ladder(10, 10), [0, 0, 40, 90])})]
    guess = ladder(10, 10)
    guess[2::3] = [None] * 7 + ["high"] * 7
    result = evaluate.aic_map([prediction("c", {"p": guess})], references)
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
    result = evaluate.aic_map(predictions, references)
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
    result = evaluate.aic_map([entry, prediction("b", {"p1": ladder(50, 50)})], references)
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
    with pytest.raises(evaluate.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate.aic_map([], [broken])


def test_official_mean_is_bit_identical_to_numpy_mean():
    rng = np.random.default_rng(3)
    terms = np.exp(-rng.random((4000, 14)) * rng.random((4000, 1)) * 5)
    counted = rng.random((4000, 14)) < rng.random((4000, 1))
    means = evaluate.official_mean(terms, counted)
    expected = [np.mean(row[mask]) if mask.any() else 0.0 for row, mask in zip(terms, counted)]
    assert np.array_equal(means, np.asarray(expected))


def loop_score(predictions, references):
    """The metric written as the plain per-image loop, to check the vectorised version."""
    deltas = 2 * np.asarray(config.AIC_OKS_SIGMAS)
    first = {}
    for entry in predictions:
        first.setdefault(entry["image_id"].split(".")[0], entry["keypoint_annotations"])
    values, denominator = [], 0
    for ref in references:
        guesses = list(first.get(ref["image_id"], {}).values())
        for name, keypoints in ref["keypoint_annotations"].items():
            gt = np.reshape(keypoints, (14, 3))
            counted = gt[:, 2] == 1
            box = ref["human_annotations"][name]
            scale = np.float32((box[3] - box[1]) * (box[2] - box[0]))
            oks = [np.mean(np.exp(-np.sum((gt[counted, :2] - np.reshape(g, (14, 3))[counted, :2])
                                          ** 2, axis=1) / 2 / deltas[counted] ** 2 / (scale + 1)))
                   if counted.any() else 0.0 for g in guesses]
            values.append(max(oks, default=0.0))
        if ref["image_id"] in first:
            denominator += max(len(ref["keypoint_annotations"]), len(guesses))
        else:
            denominator += len(ref["human_annotations"])
    values = np.asarray(values)
    return np.mean([np.sum(values > t) / np.float32(denominator)
                    for t in np.linspace(0.5, 0.95, 10)])


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
        guesses = {}
        for name, (keypoints, _) in people.items():
            noisy = np.asarray(keypoints, dtype=np.float64) + rng.normal(0, 4, size=42)
            guesses[name] = noisy.tolist()
        for extra in range(rng.integers(0, 2)):
            guesses[f"extra{extra}"] = rng.uniform(0, 400, size=42).tolist()
        if rng.random() > 0.1:
            predictions.append(prediction(f"img{index}.jpg", guesses))
    return predictions, references


def test_vectorised_score_equals_plain_loop(monkeypatch):
    rng = np.random.default_rng(11)
    predictions, references = random_data(rng)
    expected = loop_score(predictions, references)
    assert evaluate.aic_map(predictions, references)["score"] == expected
    # Tiny chunks exercise the chunked pairing; the result must not change at all.
    ground_truth = evaluate.parse_references(references)
    submission = evaluate.parse_predictions(predictions, ground_truth.image_ids, [])
    whole = evaluate.best_matches(ground_truth, submission)
    monkeypatch.setattr(evaluate, "MAX_PAIRS_PER_CHUNK", 3)
    chunked = evaluate.best_matches(ground_truth, submission)
    assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])
    assert evaluate.aic_map(predictions, references)["score"] == expected


# ------------------------------------------------------------------------------ command line
def test_cli_prints_warnings_table_and_score_last(capsys):
    status = evaluate.main(["--submit", PREDICTIONS_SMALL, "--ref", REFERENCE_SMALL])
    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    # img_a: 2 of 2 (swapped order, '.jpg' stripped); img_b: 1 found of max(1, 2 valid);
    # img_c missing: 1. Score 3 / 5 at every threshold.
    assert lines[-1] == "Score: 0.60000000"
    assert "warning: img_c is not in the prediction JSON file." in lines
    assert any(line.startswith("warning: img_b human3:") for line in lines)
    assert any("has no key 'image_id'" in line for line in lines)


def test_cli_json_output_parses(tmp_path, capsys):
    json_out = tmp_path / "scores.json"
    status = evaluate.main(["--submit", PREDICTIONS_SMALL, "--ref", REFERENCE_SMALL, "--json",
                            "--json_out", str(json_out)])
    out = capsys.readouterr().out
    assert status == 0 and len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert result["score"] == pytest.approx(0.6)
    assert set(result["per_threshold"]) == {f"{t:.2f}" for t in np.linspace(0.5, 0.95, 10)}
    assert (result["spurious_people"], result["missed_people"]) == (1, 1)
    assert len(result["per_keypoint"]) == 14
    assert json.loads(json_out.read_text()) == result


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the predictions file"),
    ("[{\"image_id\": ", "is not valid JSON"),
    ("{\"image_id\": \"a\"}", "must hold a JSON list"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
])
def test_unreadable_predictions_exit_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "pred.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    status = evaluate.main(["--submit", str(path), "--ref", REFERENCE_SMALL])
    captured = capsys.readouterr()
    assert status == 2
    assert len(captured.err.strip().splitlines()) == 1
    assert str(path) in captured.err and message in captured.err


def test_malformed_reference_exits_2_via_subprocess(tmp_path):
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps([{"image_id": "a", "keypoint_annotations": {"h": [1, 2]},
                                      "human_annotations": {"h": [0, 0, 1, 1]}}]))
    completed = subprocess.run(
        [sys.executable, "evaluate.py", "--submit", PREDICTIONS_SMALL, "--ref", str(reference)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "evaluate.py: error: reference record 0 (a) h: keypoints must be 42 numbers"]


def test_missing_ref_is_a_usage_error():
    with pytest.raises(SystemExit) as raised:
        evaluate.main(["--submit", PREDICTIONS_SMALL])
    assert raised.value.code == 2


# ------------------------------------------------------------------------------ model mode
@pytest.fixture
def fake_model_mode(tmp_path, monkeypatch):
    """An image folder and a stand-in checkpoint whose 'network' answers by image width."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "img_a.jpg"), np.zeros((90, 240, 3), np.uint8))
    cv2.imwrite(str(images / "img_b.png"), np.zeros((140, 100, 3), np.uint8))
    (images / "img_c.jpg").write_bytes(b"not a jpeg")
    answers = {240: [ladder(10, 10), ladder(200, 10)], 100: [ladder(50, 50)]}

    def fake_estimate_poses(model, image, cfg):
        # The checkpoint's config arrives with the command line's override on top.
        assert model == "network" and cfg.preset == "cpu" and cfg.min_parts == 2
        people = np.array(answers[image.shape[1]], dtype=np.float32).reshape(-1, 14, 3)
        return people, np.ones(len(people), np.float32)

    import inference
    monkeypatch.setattr(inference, "estimate_poses", fake_estimate_poses)
    fake_model = types.ModuleType("model")
    fake_model.load_checkpoint = lambda path: ("network", config.make_config("cpu"))
    monkeypatch.setitem(sys.modules, "model", fake_model)
    return images


def test_model_mode_writes_submission_and_scores(fake_model_mode, tmp_path, capsys):
    out = tmp_path / "pred.json"
    status = evaluate.main(["--model", "ckpt.keras", "--images", str(fake_model_mode), "--ref",
                            REFERENCE_SMALL, "--out", str(out), "--json", "--no_progress",
                            "--min_parts", "2"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0
    written = json.loads(out.read_text())
    assert [entry["image_id"] for entry in written] == ["img_a", "img_b"]
    # img_c is unreadable: skipped with a warning, then scored as missing: 3 of 4 people.
    assert any("img_c.jpg" in warning for warning in result["warnings"])
    assert result["score"] == pytest.approx(0.75) and result["missing_images"] == 1


def test_model_mode_without_reference_only_writes_submission(fake_model_mode, tmp_path,
                                                             capsys):
    out = tmp_path / "test_a.json"
    status = evaluate.main(["--model", "ckpt.keras", "--images", str(fake_model_mode),
                            "--out", str(out), "--no_progress", "--min_parts", "2",
                            "--limit", "2"])
    captured = capsys.readouterr()
    assert status == 0 and "Score" not in captured.out
    written = json.loads(out.read_text())
    assert [entry["image_id"] for entry in written] == ["img_a", "img_b"]
    assert sorted(written[0]["keypoint_annotations"]) == ["human1", "human2"]


# ------------------------------------------------------------------------------ oracle
def test_oracle_canvas_and_grid_by_hand():
    keypoints = np.zeros((1, 14, 3))
    keypoints[0, 0] = [100, 50, 1]
    keypoints[0, 1] = [700, 900, 3]  # unlabelled: ignored
    boxes = np.array([[10, 10, 120, 200]], dtype=np.float64)
    canvas = evaluate.oracle_canvas({}, keypoints, boxes)
    assert canvas == pytest.approx((120 * 1.05 + 8, 200 * 1.05 + 8))
    assert evaluate.oracle_canvas({"width": 640, "height": 480}, keypoints, boxes) == (640, 480)
    cfg = config.make_config("cpu", inference_height=192, stride=4)
    factor, grid = evaluate.oracle_grid((640.0, 480.0), cfg)
    assert factor == pytest.approx(0.4)
    assert grid == (48, 64)


def skeleton(x0):
    """A plausible standing person (42 numbers, all visible) whose box starts at x = x0."""
    joints = [(60, 100), (40, 160), (30, 220), (140, 100), (160, 160), (170, 220), (75, 230),
              (70, 310), (65, 390), (125, 230), (130, 310), (135, 390), (100, 20), (100, 90)]
    return [value for x, y in joints for value in (x0 + x, y, 1)]


def test_oracle_recovers_well_separated_people():
    references = [dict(record("o1", {"human1": (skeleton(0), [20, 10, 180, 400]),
                                     "human2": (skeleton(260), [280, 10, 440, 400])}),
                       width=480, height=420),
                  record("o2", {"human1": (skeleton(40), [60, 10, 220, 400])})]
    cfg = config.make_config("cpu")
    predictions, timing = evaluate.oracle_predictions(references, cfg)
    assert [entry["image_id"] for entry in predictions] == ["o1", "o2"]
    assert timing["images"] == 2 and timing["render_ms"] > 0 and timing["parse_ms"] > 0
    result = evaluate.aic_map(predictions, references)
    assert result["num_pred"] == 3 and result["ap50"] == 1.0
    assert result["missed_people"] == 0 and result["spurious_people"] == 0
    only_first, _ = evaluate.oracle_predictions(references, cfg, limit=1)
    assert [entry["image_id"] for entry in only_first] == ["o1"]
