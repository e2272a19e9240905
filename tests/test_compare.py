"""``python -m ultralytics_addmodules compare``: table, CSV and plot of several model YAMLs."""

from __future__ import annotations

import csv
import math
import os
import statistics
import subprocess
import sys

import pytest
from helpers import REPO, load_script, make_tiny_dataset

from ultralytics_addmodules import __main__ as cli
from ultralytics_addmodules.compare import (
    ModelResult,
    TrainRun,
    compare_models,
    markdown_table,
    new_run_dir,
    pareto_front,
    place_labels,
    within_spread,
)
from ultralytics_addmodules.measure import LatencyStats

MODELS = ["yolo11n.yaml", "yolo11n-MobileNetV4.yaml"]


def read_rows(run_dir):
    with open(run_dir / "compare.csv", newline="") as f:
        return list(csv.DictReader(f))


def only_run_dir(project):
    (run_dir,) = [p for p in project.iterdir() if p.is_dir()]
    return run_dir


def info_of(name, imgsz):
    """(params, GFLOPs) exactly as Ultralytics' model.info() prints them."""
    from ultralytics import YOLO

    _layers, params, _grads, gflops = YOLO(name).model.info(verbose=True, imgsz=imgsz)
    return params, gflops


def test_compare_without_data_writes_table_csv_and_plot(tmp_path):
    project = tmp_path / "runs"
    code = cli.main(["compare", *MODELS, "--imgsz", "64", "--runs", "2", "--warmup", "1", "--threads", "1",
                     "--project", str(project)])
    assert code == 0
    run_dir = only_run_dir(project)
    assert run_dir.name == "1"
    for name in ("compare.csv", "compare.md", "compare.png"):
        assert (run_dir / name).stat().st_size > 0
    rows = read_rows(run_dir)
    assert [r["model"] for r in rows] == MODELS
    params, gflops = info_of(MODELS[1], 64)  # as model.info() prints them
    assert int(rows[1]["params"]) == params and float(rows[1]["gflops"]) == gflops
    for k, row in enumerate(rows):
        assert int(row["params"]) > 0 and float(row["gflops"]) > 0
        q1, median, q3 = float(row["cpu_q1_ms"]), float(row["cpu_ms"]), float(row["cpu_q3_ms"])
        assert 0 < q1 <= median <= q3
        assert math.isclose(float(row["fps"]), 1000 / median, rel_tol=1e-2)
        assert row["map50"] == "" and row["error"] == ""
        # the per-layer table of every model lands in the same run folder
        assert (run_dir / f"layers-{k + 1}-{row['model'][:-5]}.md").read_text().count("| sum |") == 1
    table = (run_dir / "compare.md").read_text()
    assert "| yolo11n-MobileNetV4.yaml |" in table and "GFLOPs@64" in table and "mAP50" not in table
    assert "(IQR " in table and "| FPS |" in table
    assert "Latency protocol: batch 1, 64x64 input, fused" in table and "1 warm-up rounds, then 2 timed" in table
    assert (run_dir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_yaml_is_an_error_row_not_a_crash(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("nc: 3\nbackbone:\n  - [-1, 1, NoSuchModule, [16]]\nhead:\n  - [[0], 1, Detect, [nc]]\n")
    project = tmp_path / "runs"
    code = cli.main(["compare", "yolo11n.yaml", str(bad), "missing-model.yaml", "--imgsz", "64", "--runs", "1",
                     "--warmup", "0", "--project", str(project)])
    assert code == 0  # at least one model worked
    run_dir = only_run_dir(project)
    rows = {r["model"]: r for r in read_rows(run_dir)}
    assert rows["yolo11n.yaml"]["error"] == "" and int(rows["yolo11n.yaml"]["params"]) > 0
    assert "NoSuchModule" in rows[str(bad)]["error"] and rows[str(bad)]["params"] == ""
    assert "missing-model.yaml" in rows["missing-model.yaml"]["error"]
    assert "| Error |" in (run_dir / "compare.md").read_text()
    assert (run_dir / "compare.png").exists()


def test_all_models_failing_exits_non_zero(tmp_path):
    assert cli.main(["compare", "nothing-here.yaml", "--imgsz", "64", "--project", str(tmp_path)]) == 1


@pytest.mark.slow
def test_compare_with_seeds_reports_mean_and_std_over_runs(tmp_path, capsys):
    data = make_tiny_dataset(tmp_path / "data", n_train=4, n_val=2)
    project = tmp_path / "runs"
    code = cli.main(["compare", "yolo11n.yaml", "yolo11n-MobileNetV4.yaml", "--data", str(data), "--epochs", "1",
                     "--seeds", "2", "--imgsz", "64", "--batch", "2", "--device", "cpu", "--runs", "2",
                     "--warmup", "0", "--project", str(project), "--name", "tiny"])
    assert code == 0
    run_dir = project / "tiny"
    rows = read_rows(run_dir)
    assert [r["error"] for r in rows] == ["", ""]
    with open(run_dir / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [(r["model"], r["seed"]) for r in runs] == [(m, s) for m in ("yolo11n.yaml", "yolo11n-MobileNetV4.yaml")
                                                       for s in ("0", "1")]
    for row in rows:
        assert row["seeds"] == "2"
        for key in ("map50", "map50_95"):
            values = [float(r[key]) for r in runs if r["model"] == row["model"]]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert math.isclose(float(row[key]), statistics.fmean(values), abs_tol=1e-6)
            assert math.isclose(float(row[key + "_std"]), statistics.stdev(values), abs_tol=1e-6)
    # params are those of the trained model: detection head sized for the dataset's 2 classes
    from ultralytics import YOLO

    trained = YOLO(run_dir / "1-yolo11n-seed1" / "weights" / "last.pt").model
    assert int(rows[0]["params"]) == sum(p.numel() for p in trained.parameters())
    out = capsys.readouterr().out
    assert "Latency protocol:" in out and "trained 2 times (seeds 0-1)" in out
    first = statistics.fmean(float(r["map50_95"]) for r in runs if r["model"] == "yolo11n.yaml")
    assert f"{first:.3f} ± " in out  # mean ± std printed in the table
    assert (run_dir / "compare.png").stat().st_size > 0


def test_dataset_error_stops_before_any_work(tmp_path, capsys):
    data = make_tiny_dataset(tmp_path / "data", n_train=2, n_val=2)
    next((tmp_path / "data" / "train" / "labels").glob("*.txt")).write_text("9 0.5 0.5 0.1 0.1\n")
    code = cli.main(["compare", "yolo11n.yaml", "--data", str(data), "--project", str(tmp_path / "runs")])
    assert code == 2
    assert "class id 9 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_lists_subcommands():
    env = {**os.environ, "YOLO_OFFLINE": "true", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "ultralytics_addmodules", "nope"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2
    assert "compare" in result.stderr and "Traceback" not in result.stderr


def test_pareto_front_and_table_helpers(tmp_path):
    # (latency, accuracy): b is beaten by a (slower and worse); c is slower but better
    assert pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.6)]) == [0, 2]
    rows = [ModelResult("a.yaml", 1e6, 1.0, cpu=LatencyStats.from_samples([2.0, 2.0, 2.5, 40.0])),
            ModelResult("b.yaml", error="ValueError: x | y")]
    table = markdown_table(rows, 640, with_map=False)
    assert "| a.yaml | 1.000 | 1.00 | 2.2 (IQR 9.9; 1/4 outliers) | 444.4 |  |" in table and "x \\| y" in table
    assert new_run_dir(tmp_path, None).name == "1" and new_run_dir(tmp_path, None).name == "2"
    assert new_run_dir(tmp_path, "exp").name == "exp" and new_run_dir(tmp_path, "exp").name == "exp2"


def seeded(name, pairs):
    return ModelResult(name, 1e6, 1.0, runs=[TrainRun(k, a, b) for k, (a, b) in enumerate(pairs)])


def test_table_marks_differences_smaller_than_the_spread():
    best = seeded("best.yaml", [(0.80, 0.50), (0.84, 0.54)])  # mAP50-95 mean 0.52, std 0.028
    close = seeded("close.yaml", [(0.70, 0.49), (0.72, 0.51)])  # 0.50: 0.02 below, within sqrt(0.028² + 0.014²)
    far = seeded("far.yaml", [(0.60, 0.30), (0.62, 0.31)])  # 0.305: far below
    assert within_spread(close, best, "map50_95") and not within_spread(far, best, "map50_95")
    assert not within_spread(close, best, "map50")  # mAP50: 0.71 vs 0.82, beyond the spread
    table = markdown_table([best, close, far], 64, with_map=True)
    lines = {line.split(" | ")[0][2:]: line for line in table.splitlines()[2:]}
    assert "**0.520 ± 0.028**" in lines["best.yaml"] and "**0.820 ± 0.028**" in lines["best.yaml"]
    assert "| 0.500 ± 0.014 ≈ |" in lines["close.yaml"] and "| 0.710 ± 0.014 |" in lines["close.yaml"]
    assert "≈" not in lines["far.yaml"]
    single = [seeded("a.yaml", [(0.5, 0.3)]), seeded("b.yaml", [(0.5, 0.3)])]
    assert "≈" not in markdown_table(single, 64, with_map=True) and not within_spread(*single, "map50")


def test_plot_labels_never_overlap_each_other_or_the_points():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    # the measured failure: two models at (almost) the same point; plus a crowd and a point at the edge
    points = [(18.0, 0.40), (18.0, 0.40), (18.1, 0.401), (18.05, 0.399), (25.0, 0.45), (25.1, 0.45), (40.0, 0.2)]
    labels = ["yolo11n-MobileNetV4", "yolo11n-MobileNetV4-copy", "yolo11n-C3_UIB", "yolo11n-EfficientNetV2",
              "yolo11n", "yolo11n-MobileNetV1", "yolo11n-timm"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(*zip(*points))
    ax.margins(0.25)
    fig.tight_layout()
    bar = (15.0, 0.40, 21.0, 0.40)  # a latency IQR bar through the crowd
    texts = place_labels(ax, points, labels, avoid=[bar])
    assert sorted(t.get_text() for t in texts) == sorted(labels)
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text, without any leader line
    (bx0, by0), (bx1, by1) = ax.transData.transform(bar[:2]), ax.transData.transform(bar[2:])
    for i, a in enumerate(boxes):
        assert not (a.x0 < bx1 and bx0 < a.x1 and a.y0 <= by0 <= a.y1), "label on the error bar"
        assert fig.bbox.x0 <= a.x0 and a.x1 <= fig.bbox.x1 and fig.bbox.y0 <= a.y0 and a.y1 <= fig.bbox.y1
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
        for x, y in points:
            px, py = ax.transData.transform((x, y))
            assert not (a.x0 < px < a.x1 and a.y0 < py < a.y1)  # no label covers a point
    plt.close(fig)


@pytest.mark.parametrize("argv, flag", [
    (["--epochs", "0"], "--epochs"), (["--runs", "0"], "--runs"), (["--warmup", "-1"], "--warmup"),
    (["--seeds", "0"], "--seeds"), (["--threads", "0"], "--threads"), (["--imgsz", "16"], "--imgsz"),
    (["--seeds", "2"], "--seeds 2"),  # seeds without --data
])
def test_bad_options_give_one_bilingual_line_and_no_run_folder(tmp_path, capsys, argv, flag):
    code = cli.main(["compare", "yolo11n.yaml", *argv, "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("compare: 错误：") and " | error: " in err and flag in err.split(" | ")[1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_compare_and_benchmarks_give_the_same_latency_within_their_spread(tmp_path):
    """Both tools time the same fused model with measure.py; their medians agree within the stated IQRs."""
    bench = load_script("benchmarks/run.py", "bench_run")
    settings = {"warmup": 3, "threads": 1, "runs": 15}
    ours, theirs = [], []
    for _ in range(3):  # the tools take turns, so a shared machine's drift between runs hits both alike
        (row,) = compare_models(["yolo11n.yaml"], imgsz=64, save_dir=tmp_path / "compare", progress=False, **settings)
        ours.append(row.cpu)
        table = bench.measure_latency_table(["yolo11n.yaml"], 64, ["pytorch"], calib_data="", workdir=tmp_path,
                                            weights={}, **settings)
        theirs.append(table[("yolo11n.yaml", "pytorch")])
    assert all(s.n == 15 for s in ours + theirs)

    def median(stats):
        return statistics.median(s.median_ms for s in stats)

    def spread(stats):  # within a run (IQR) plus between runs of the same tool (how far its medians moved)
        medians = [s.median_ms for s in stats]
        return statistics.median(s.iqr_ms for s in stats) + max(medians) - min(medians)

    # A full-suite run once saw two single runs minutes apart differ by 9 % with IQRs of 2-5 %: the IQR alone
    # is not a run's whole spread. Before measure.py the two tools differed up to 30-fold.
    assert abs(median(ours) - median(theirs)) <= spread(ours) + spread(theirs), (ours, theirs)


def test_plot_draws_a_dot_per_training_run_and_iqr_bars():
    from ultralytics_addmodules.compare import figure

    a = seeded("a.yaml", [(0.8, 0.50), (0.84, 0.54), (0.82, 0.52)])
    b = seeded("b.yaml", [(0.7, 0.49), (0.72, 0.51), (0.71, 0.47)])
    a.cpu = LatencyStats.from_samples([10.0, 11.0, 12.0, 13.0])
    b.cpu = LatencyStats.from_samples([20.0, 21.0, 22.0, 30.0])
    fig = figure([a, b], 64, with_map=True)
    (ax,) = fig.axes
    dots = [tuple(p) for c in ax.collections if c.get_gid() == "training runs" for p in c.get_offsets()]
    assert sorted(dots) == sorted([(a.cpu_ms, v) for v in a.metric("map50_95")]
                                  + [(b.cpu_ms, v) for v in b.metric("map50_95")])
    assert [c.get_label() for c in ax.collections if c.get_gid() == "training runs"][0] == "one training run"
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b"]
    import matplotlib.pyplot as plt

    plt.close(fig)
