"""ultralytics_addmodules.measure: the one latency protocol shared by compare, benchmarks and deploy checks."""

from __future__ import annotations

import math
import time

import pytest
import torch

from ultralytics_addmodules.measure import LatencyStats, measure_latency, model_size, protocol, torch_runner


def test_stats_median_quartiles_and_outliers():
    samples = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 100.0]
    s = LatencyStats.from_samples(samples)
    assert s.median_ms == 14.5 and s.n == 10
    # inclusive quartiles of 10 points: positions 3.25 and 7.75 (1-based)
    assert math.isclose(s.q1_ms, 12.25) and math.isclose(s.q3_ms, 16.75) and math.isclose(s.iqr_ms, 4.5)
    assert s.outliers == (100.0,)  # above q3 + 1.5 * IQR = 23.5; nothing below q1 - 1.5 * IQR
    assert math.isclose(s.fps, 1000 / 14.5)
    assert s.cell() == "14.5 (IQR 4.5; 1/10 outliers)"
    assert LatencyStats.from_samples([5.0, 5.0]).cell(2) == "5.00 (IQR 0.00)"
    one = LatencyStats.from_samples([7.0])
    assert (one.median_ms, one.q1_ms, one.q3_ms, one.outliers) == (7.0, 7.0, 7.0, ())
    assert s.overlaps(LatencyStats.from_samples([16.0, 18.0])) and not s.overlaps(one)
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_runs_are_interleaved_with_rotating_order_and_fixed_threads():
    calls, threads_seen = [], set()

    def make(name):
        def run():
            calls.append(name)
            threads_seen.add(torch.get_num_threads())
        return run

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    stats = measure_latency({"a": make("a"), "b": make("b"), "c": make("c")}, warmup=2, runs=4, threads=target)
    assert threads_seen == {target} and torch.get_num_threads() == before  # fixed while timing, then restored
    rounds = [tuple(calls[i:i + 3]) for i in range(0, len(calls), 3)]
    assert rounds == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b"), ("a", "b", "c"), ("b", "c", "a"),
                      ("c", "a", "b")]
    assert [stats[k].n for k in "abc"] == [4, 4, 4]  # warm-up rounds are not timed


def test_interleaving_spreads_a_slow_period_over_all_candidates(monkeypatch):
    # background load that comes and goes (every second call is slow) must hit both candidates alike;
    # a fake clock that the calls advance keeps the test exact on a busy machine
    import ultralytics_addmodules.measure as measure

    clock = {"now": 0.0, "calls": 0}
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock["now"])

    def run():
        clock["calls"] += 1
        clock["now"] += 0.004 if clock["calls"] % 2 == 0 else 0.001

    stats = measure_latency({"x": run, "y": run}, warmup=0, runs=12, threads=1)
    slow_x = sum(s > 3 for s in stats["x"].samples_ms)
    slow_y = sum(s > 3 for s in stats["y"].samples_ms)
    assert (slow_x, slow_y) == (6, 6)  # in a fixed order x, y, x, y ... y would take all 12 slow calls
    assert math.isclose(stats["x"].median_ms, 2.5) and math.isclose(stats["y"].median_ms, 2.5)


def test_a_failing_candidate_is_reported_and_the_others_keep_their_numbers():
    def broken():
        raise RuntimeError("out of memory\nsecond line")

    stats = measure_latency({"ok": lambda: None, "bad": broken}, warmup=1, runs=3, threads=1)
    assert stats["ok"].n == 3 and stats["ok"].error == ""
    assert stats["bad"].error == "RuntimeError: out of memory" and stats["bad"].n == 0
    assert math.isnan(stats["bad"].median_ms) and stats["bad"].cell() == ""
    with pytest.raises(ValueError):
        measure_latency({"ok": lambda: None}, runs=0)


def test_torch_runner_times_a_fused_copy_and_leaves_the_model_alone():
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml").model
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    run = torch_runner(model, imgsz=64)
    out = run()
    assert isinstance(out, tuple) and out[0].shape[:2] == (1, 84)  # eval-mode Detect output (boxes + 80 classes)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn  # original not fused
    params, gflops = model_size(model, 64)
    _layers, info_params, _grads, info_gflops = model.info(verbose=True, imgsz=64)
    assert (params, gflops) == (info_params, info_gflops)


def test_protocol_states_every_part():
    text = protocol(warmup=3, runs=7, threads=2, runtime="ONNX Runtime 1.x, CPU", imgsz=(320, 256))
    for part in ("batch 1", "320x256", "fused", "ONNX Runtime 1.x, CPU", "2 threads", "3 warm-up", "7 timed",
                 "interleaved", "median", "IQR", "FPS", "outliers"):
        assert part in text, part


def test_spread_warning_names_only_the_noisy_candidates():
    from ultralytics_addmodules.measure import spread_warning

    steady = LatencyStats.from_samples([10.0, 10.2, 10.1, 9.9])
    busy = LatencyStats.from_samples([10.0, 30.0, 12.0, 25.0])
    assert not steady.noisy and busy.noisy
    assert spread_warning({"a.yaml": steady}) == ""
    line = spread_warning({"a.yaml": steady, "b.yaml": busy})
    assert "b.yaml" in line and "a.yaml" not in line and " | warning:" in line and "\n" not in line


def test_channels_last_benchmark_compares_the_two_layouts_of_one_model(capsys):
    """benchmarks/channels_last.py times the shipped model against an NCHW copy, leaving the shipped one as is."""
    from helpers import load_script
    from ultralytics import YOLO

    from ultralytics_addmodules.nn.builder import StagedBackbone

    bench = load_script("benchmarks/channels_last.py", "bench_channels_last")
    model = YOLO("yolo11n-MobileNetV1.yaml").model
    copied = bench.nchw_copy(model)
    layouts = lambda m: [b.channels_last_inference for b in m.modules() if isinstance(b, StagedBackbone)]  # noqa: E731
    assert layouts(model) == [True] and layouts(copied) == [False]
    bench.main(["--models", "yolo11n-MobileNetV1.yaml", "--imgsz", "64", "--rounds", "1", "--warmup", "0"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| yolo11n-MobileNetV1"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 6 and all(float(cells[i]) > 0 for i in (2, 4, 5))  # both layouts timed, ratios computed


def test_benchmark_validates_pytorch_and_exports_with_the_same_letterbox(monkeypatch, tmp_path):
    """benchmarks/run.py compares a .pt with its exports: the .pt must not get Ultralytics' rect batches, which
    pad a 160 px image to 192 px while a static export sees 160 (that alone made a 0.013 mAP "export gap")."""
    from types import SimpleNamespace

    import ultralytics
    from helpers import load_script

    bench = load_script("benchmarks/run.py", "bench_run_val")
    seen = {}

    def fake_val(self, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(box=SimpleNamespace(map=0.5))

    monkeypatch.setattr(ultralytics.YOLO, "val", fake_val)
    assert bench.map50_95("yolo11n.yaml", tmp_path / "data.yaml", 160) == 0.5
    assert seen["rect"] is False and seen["imgsz"] == 160 and seen["batch"] == 1
