"""``python -m ultralytics_addmodules layers``: per-layer parameters and GFLOPs that add up to model.info()."""

from __future__ import annotations

import copy
import csv
import math
import re

import pytest
import torch

from ultralytics_addmodules import __main__ as cli
from ultralytics_addmodules.layers import layer_costs


@pytest.fixture(scope="module")
def models():
    from ultralytics import YOLO

    names = ["yolo11n.yaml", "yolo11n-MobileNetV4.yaml", "yolo11n-EfficientNetV2.yaml"]
    return {name: YOLO(name).model for name in names}


@pytest.mark.parametrize("name", ["yolo11n.yaml", "yolo11n-MobileNetV4.yaml", "yolo11n-EfficientNetV2.yaml"])
def test_layer_sums_equal_the_totals_ultralytics_reports(models, name):
    model = models[name]
    _layers, info_params, _grads, info_gflops = model.info(verbose=True, imgsz=640)
    costs = layer_costs(model, 640)
    assert [r.index for r in costs.layers] == [str(i) for i in range(len(model.model))]
    assert sum(r.params for r in costs.layers) == info_params == costs.total_params
    assert math.isclose(sum(r.gflops for r in costs.layers), info_gflops, rel_tol=0.01)
    assert math.isclose(costs.total_gflops, info_gflops, rel_tol=1e-9)
    detect = costs.layers[-1]
    assert detect.module == "Detect" and detect.source == str(model.model[-1].f) and detect.gflops > 0
    parts = [r for r in costs.rows if r.part]
    if name == "yolo11n.yaml":
        assert parts == []  # stock layers are not split
    else:
        # our backbone (layer 0) is broken into stem and four stages that add up to it
        assert [r.index for r in parts] == ["0.stem", "0.stages.0", "0.stages.1", "0.stages.2", "0.stages.3"]
        layer0 = costs.layers[0]
        assert sum(r.params for r in parts) == layer0.params == sum(p.numel() for p in model.model[0].parameters())
        assert math.isclose(sum(r.gflops for r in parts), layer0.gflops, rel_tol=1e-9)
        assert all(r.gflops > 0 for r in parts)


def test_counts_at_full_size_when_ultralytics_reports_a_full_size_total(models):
    """Newer Ultralytics counts GFLOPs at the real image size; the layers then follow that count."""
    import thop

    model = models["yolo11n.yaml"]
    full = thop.profile(copy.deepcopy(model), inputs=[torch.zeros(1, 3, 128, 128)], verbose=False)[0] / 1e9 * 2
    params = sum(p.numel() for p in model.parameters())
    costs = layer_costs(model, 128, totals=(params, full))
    assert costs.method.startswith("thop on a 128x128 image")
    assert math.isclose(sum(r.gflops for r in costs.layers), full, rel_tol=1e-9)
    # attention (C2PSA, layer 10) grows with the square of the area, so the two counts differ there only
    stride_sized = thop.profile(copy.deepcopy(model), inputs=[torch.zeros(1, 3, 32, 32)], verbose=False)[0] / 1e9 * 2
    proxy = layer_costs(model, 128, totals=(params, stride_sized * (128 / 32) ** 2))  # 8.3's way of counting
    assert proxy.method.startswith("thop on a 32x32 image")
    changed = [a.index for a, b in zip(costs.layers, proxy.layers) if not math.isclose(a.gflops, b.gflops,
                                                                                       rel_tol=1e-9)]
    assert changed == ["10"]


def test_cli_prints_the_table_and_writes_files(tmp_path, capsys):
    code = cli.main(["layers", "yolo11n-MobileNetV4.yaml", "--imgsz", "320", "--project", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| Layer | From | Module | Params |" in out and "0.stages.3" in out and "| sum |" in out
    run_dir = tmp_path / "1"
    with open(run_dir / "layers-yolo11n-MobileNetV4.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    top = [r for r in rows if r["part_of_layer_above"] == "0"]
    # the totals line (what model.info reports, checked against it above) matches the file's sums
    totals = re.search(r"them: ([\d,]+) parameters, ([\d.]+) GFLOPs", out)
    assert sum(int(r["params"]) for r in top) == int(totals[1].replace(",", ""))
    assert math.isclose(sum(float(r["gflops"]) for r in top), float(totals[2]), rel_tol=1e-4)
    assert (run_dir / "layers-yolo11n-MobileNetV4.md").read_text().startswith("Per-layer cost of")


@pytest.mark.parametrize("argv, needle", [
    (["yolo11n.yaml", "--imgsz", "100"], "--imgsz"),
    (["model.txt"], "model.txt"),
    (["missing.pt"], "missing.pt"),
    (["no-such-model.yaml"], "no-such-model.yaml"),
])
def test_bad_input_gives_one_bilingual_line(tmp_path, capsys, argv, needle):
    code = cli.main(["layers", *argv, "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("layers: 错误：") and " | error: " in err and needle in err.split(" | ")[1]
    assert not (tmp_path / "runs").exists()


def test_broken_yaml_is_one_line_too(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("nc: 3\nbackbone:\n  - [-1, 1, NoSuchModule, [16]]\nhead:\n  - [[0], 1, Detect, [nc]]\n")
    code = cli.main(["layers", str(bad), "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "NoSuchModule" in err and "Traceback" not in err
