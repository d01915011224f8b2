"""Smoke test of the whole quick-start chain with a tiny budget: every artefact appears and is
well-formed. The accuracy goal is a benchmark (docs/benchmarks.md), not a test."""

import glob
import json
import os
import subprocess
import sys

import cv2
import pytest

from tests.conftest import ROOT


# One xdist worker runs them all, so the module's quick start (five subprocesses) runs once.
pytestmark = pytest.mark.xdist_group("quickstart")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quickstart")
    # The tiny preset and a 3-step budget: the chain, not the accuracy, is under test.
    command = [sys.executable, "quickstart.py", "--preset", "tiny", "--images", "12",
               "--minutes", "0.1", "--workdir", str(workdir), "--demo_images", "2", "--",
               "--steps_per_epoch", "3", "--validation_steps", "1", "--epochs", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result.stdout


def test_summary_is_the_last_line_and_names_existing_files(quickstart_run):
    workdir, stdout = quickstart_run
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert 0.0 <= summary["mAP"] <= 1.0 and summary["preset"] == "tiny"
    assert summary["train_steps"] > 0 and summary["train_images_per_second"] > 0
    assert set(summary["step_seconds"]) == {"synthetic", "pre_process", "train", "evaluate",
                                            "demo"}
    assert os.path.isfile(summary["loss_curve"])
    assert summary["demo_drawings"], "the demo drew nothing"
    for drawing in summary["demo_drawings"]:
        assert cv2.imread(drawing) is not None
    saved = json.load(open(os.path.join(workdir, "logs", "quickstart", "quickstart_summary.json")))
    assert saved == summary


def test_data_set_and_records(quickstart_run):
    workdir, _ = quickstart_run
    records = os.path.join(workdir, "data", "records")
    for split in ("train", "val"):
        lines = open(os.path.join(records, f"{split}.jsonl")).read().splitlines()
        assert lines, split
        record = json.loads(lines[0])
        assert os.path.isfile(os.path.join(workdir, "data", record["image_path"]))
        assert len(record["people"][0]["keypoints"]) == 14


def test_checkpoints_and_logs(quickstart_run):
    workdir, _ = quickstart_run
    model_dir = os.path.join(workdir, "models", "quickstart")
    log_dir = os.path.join(workdir, "logs", "quickstart")
    for name in ("best.keras", "last.keras", "config.json", "last.json"):
        assert os.path.getsize(os.path.join(model_dir, name)) > 0, name
    assert json.load(open(os.path.join(model_dir, "config.json")))["preset"] == "tiny"
    header = open(os.path.join(log_dir, "training.csv")).readline()
    assert "loss" in header and "val_loss" in header
    assert glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)
    assert cv2.imread(os.path.join(log_dir, "loss_curve.png")) is not None


def test_predictions_are_an_aic_submission_and_scored(quickstart_run):
    workdir, _ = quickstart_run
    log_dir = os.path.join(workdir, "logs", "quickstart")
    predictions = json.load(open(os.path.join(log_dir, "val_predictions.json")))
    reference = glob.glob(os.path.join(workdir, "data", "*validation*", "*annotations*.json"))
    reference_ids = {entry["image_id"] for entry in json.load(open(reference[0]))}
    assert {entry["image_id"] for entry in predictions} == reference_ids
    for entry in predictions:
        for name, values in entry["keypoint_annotations"].items():
            assert name.startswith("human") and len(values) == 42
    scores = json.load(open(os.path.join(log_dir, "val_scores.json")))
    assert set(scores["per_threshold"]) and 0.0 <= scores["score"] <= 1.0


def test_a_second_run_stops_at_once_without_touching_the_first(quickstart_run):
    workdir, _ = quickstart_run
    checkpoint = os.path.join(workdir, "models", "quickstart", "best.keras")
    before = os.path.getmtime(checkpoint)
    result = subprocess.run([sys.executable, "quickstart.py", "--workdir", str(workdir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "already holds an earlier quick start" in result.stderr
    assert os.path.getmtime(checkpoint) == before
