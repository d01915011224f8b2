"""Tests of benchmarks/bench_frame.py: its stages are parse_image's work, and its medians."""

import json

import pytest

from conftest import load_benchmark


def load_bench(monkeypatch):
    return load_benchmark(monkeypatch, "bench_frame")


def test_a_round_times_every_stage_and_finds_the_people_parse_image_finds(monkeypatch,
                                                                           tmp_path):
    bench = load_bench(monkeypatch)
    import bench_realtime

    video = str(tmp_path / "walk.mp4")
    bench_realtime.write_video(video, (240, 240), 4)
    out = tmp_path / "rows.json"
    spec = {"preset": "light", "interpolation": "cubic", "retain": False, "fusion_upsample": 2,
            "warmup": 1,
            "frames": 3, "videos": [([184, 184], video)], "out": str(out)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    bench.worker(str(tmp_path / "spec.json"))
    [row] = json.loads(out.read_text())
    assert (row["height"], row["width"], row["frames"], row["retained"]) == (184, 184, 3, False)
    assert all(row[f"{stage}_ms"] > 0 for stage in bench.STAGES)
    assert row["people_per_frame"] == 2  # the synthetic video's two walkers, from the truth


def test_a_round_whose_stages_disagree_with_parse_image_stops(monkeypatch, tmp_path):
    bench = load_bench(monkeypatch)
    import bench_realtime

    video = str(tmp_path / "walk.mp4")
    bench_realtime.write_video(video, (96, 96), 2)
    monkeypatch.setattr(bench, "same_people", lambda plan, maps, people: False)
    spec = {"preset": "light", "interpolation": "area", "retain": False, "fusion_upsample": 1,
            "warmup": 0,
            "frames": 1, "videos": [([64, 64], video)], "out": str(tmp_path / "rows.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(SystemExit, match="other people than inference.parse_image"):
        bench.worker(str(tmp_path / "spec.json"))


def test_rows_are_the_medians_of_the_rounds_per_size_and_variant(monkeypatch):
    bench = load_bench(monkeypatch)

    def row(scale, width=368):
        return dict({f"{stage}_ms": scale * (index + 1)
                     for index, stage in enumerate(bench.STAGES)},
                    height=368, width=width, frames=10, people_per_frame=2.0, retained=True)

    cubic_on, area_off = ("cubic", "on", 2), ("area", "off", 1)
    rounds = [(cubic_on, [row(1.0), row(5.0, 656)]), (cubic_on, [row(3.0)]),
              (cubic_on, [row(2.0)]), (area_off, [row(9.0)])]
    table = {(item["width"], item["input_interpolation"]): item
             for item in bench.median_rows(rounds, "light")}
    cubic = table[368, "cubic"]
    # Stage k (from 1) is scale * k: the medians of scales 1, 3, 2 are 2 k; the total
    # 2 * (1 + ... + 7) = 56.
    assert [cubic[f"{stage}_ms"] for stage in bench.STAGES] == [2.0 * k for k in range(1, 8)]
    assert (cubic["total_ms"], cubic["rounds"], cubic["retain_freed_memory"]) == (56.0, 3, True)
    assert table[656, "cubic"]["rounds"] == 1 and table[368, "area"]["total_ms"] == 9.0 * 28
    assert table[368, "area"]["retain_freed_memory"] is False
    assert (cubic["fusion_upsample"], table[368, "area"]["fusion_upsample"]) == (2, 1)
