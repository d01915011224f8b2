"""Tests of benchmarks/bench_realtime.py's pipelining helpers (its figures are benchmarks)."""

import queue

from conftest import load_benchmark


def load_bench(monkeypatch):
    return load_benchmark(monkeypatch, "bench_realtime")


def test_frames_from_streams_that_finish_out_of_order_come_back_in_order(monkeypatch):
    bench = load_bench(monkeypatch)
    results = queue.Queue()
    # Two streams: frame 1 finishes before frame 0, and 3 before 2.
    for sequence in (1, 0, 3, 2, 4):
        results.put((sequence, f"maps {sequence}"))
    ordered = bench.in_order(results)
    assert [next(ordered) for _ in range(5)] == [f"maps {index}" for index in range(5)]


def test_targets_are_reported_per_stream_count(capsys, monkeypatch):
    bench = load_bench(monkeypatch)
    row = dict(preset="light", runtime="openvino", precision="int8", threads=2, height=368,
               width=368, maps="oracle", pipelined=True, network_ms=10.0)
    rows = [dict(row, pipelined=False, streams=1, fps=50.0),
            dict(row, streams=1, fps=60.0), dict(row, streams=2, fps=101.0)]
    bench.print_targets(rows)
    printed = capsys.readouterr().out
    assert "(oracle maps, sequential): 50.0 NOT met" in printed
    assert "(oracle maps, pipelined, 1 stream(s)): 60.0 NOT met" in printed
    assert "(oracle maps, pipelined, 2 stream(s)): 101.0 met" in printed
