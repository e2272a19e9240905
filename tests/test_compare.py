"""``python -m ultralytics_addmodules compare``: table, CSV and plot of several model YAMLs."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import pytest
from helpers import REPO, make_tiny_dataset

from ultralytics_addmodules import __main__ as cli
from ultralytics_addmodules.compare import ModelResult, markdown_table, new_run_dir, pareto_front

MODELS = ["yolo11n.yaml", "yolo11n-MobileNetV4.yaml", "yolo11n-C3_UIB.yaml"]


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
    code = cli.main(["compare", *MODELS, "--imgsz", "64", "--runs", "1", "--warmup", "1", "--project", str(project)])
    assert code == 0
    run_dir = only_run_dir(project)
    assert run_dir.name == "1"
    for name in ("compare.csv", "compare.md", "compare.png"):
        assert (run_dir / name).stat().st_size > 0
    rows = read_rows(run_dir)
    assert [r["model"] for r in rows] == MODELS
    for row in rows:
        params, gflops = info_of(row["model"], 64)
        assert int(row["params"]) == params
        assert math.isclose(float(row["gflops"]), gflops, rel_tol=1e-9)
        assert float(row["cpu_ms"]) > 0
        assert row["map50"] == "" and row["error"] == ""
    table = (run_dir / "compare.md").read_text()
    assert "| yolo11n-MobileNetV4.yaml |" in table and "GFLOPs@64" in table and "mAP50" not in table
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
def test_compare_with_data_fills_map_columns(tmp_path):
    data = make_tiny_dataset(tmp_path / "data", n_train=4, n_val=2)
    project = tmp_path / "runs"
    code = cli.main(["compare", "yolo11n.yaml", "yolo11n-MobileNetV4.yaml", "--data", str(data), "--epochs", "1",
                     "--imgsz", "64", "--batch", "2", "--device", "cpu", "--runs", "1", "--warmup", "0",
                     "--project", str(project), "--name", "tiny"])
    assert code == 0
    run_dir = project / "tiny"
    rows = read_rows(run_dir)
    assert [r["error"] for r in rows] == ["", ""]
    for row in rows:
        assert 0.0 <= float(row["map50"]) <= 1.0 and 0.0 <= float(row["map50_95"]) <= 1.0
    # params are those of the trained model: detection head sized for the dataset's 2 classes
    from ultralytics import YOLO

    trained = YOLO(run_dir / "1-yolo11n" / "weights" / "last.pt").model
    assert int(rows[0]["params"]) == sum(p.numel() for p in trained.parameters())
    assert "mAP50-95" in (run_dir / "compare.md").read_text()
    assert (run_dir / "1-yolo11n" / "results.csv").exists()  # each model trained into the run folder


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
    rows = [ModelResult("a.yaml", 1e6, 1.0, 2.0), ModelResult("b.yaml", error="ValueError: x | y")]
    table = markdown_table(rows, 640, with_map=False)
    assert "| a.yaml | 1.000 | 1.00 | 2.0 |  |" in table and "x \\| y" in table
    assert new_run_dir(tmp_path, None).name == "1" and new_run_dir(tmp_path, None).name == "2"
    assert new_run_dir(tmp_path, "exp").name == "exp" and new_run_dir(tmp_path, "exp").name == "exp2"
