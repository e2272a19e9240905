"""Every official Ultralytics 8.3.0 model YAML builds exactly the same model through our parser."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch
import ultralytics
from ultralytics.nn import tasks

from ultralytics_addmodules import patch

OFFICIAL = sorted((Path(ultralytics.__file__).parent / "cfg" / "models").rglob("*.yaml"))
MODEL_CLASSES = {
    "detect": tasks.DetectionModel,
    "segment": tasks.SegmentationModel,
    "classify": tasks.ClassificationModel,
    "pose": tasks.PoseModel,
    "obb": tasks.OBBModel,
}


def _model_class(d: dict, path: Path):
    if "rtdetr" in path.stem:
        return tasks.RTDETRDetectionModel
    if "world" in path.stem:
        return tasks.WorldModel
    return MODEL_CLASSES[tasks.guess_model_task(d)]


def _build(cls, d: dict, parse_model):
    saved = tasks.parse_model
    tasks.parse_model = parse_model
    try:
        torch.manual_seed(0)
        return cls(deepcopy(d), verbose=False)
    finally:
        tasks.parse_model = saved


def _first_tensor(out):
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out


def _cases():
    for path in OFFICIAL:
        d = tasks.yaml_load(path)
        scales = list(d.get("scales") or {None: None})[:2]  # n and s where the YAML has scales
        for scale in scales:
            yield pytest.param(path, scale, id=f"{path.stem}-{scale or 'fixed'}")


def test_all_official_yamls_are_covered():
    assert len(OFFICIAL) >= 40  # 8.3.0 ships 45 model YAMLs; a wrong glob must not pass silently


@pytest.mark.slow
@pytest.mark.parametrize("path,scale", list(_cases()))
def test_same_model_as_stock(path: Path, scale):
    d = tasks.yaml_load(path)
    d["yaml_file"] = str(path)
    if scale:
        d["scale"] = scale
    cls = _model_class(d, path)
    stock = _build(cls, d, patch.stock_parse_model())
    ours = _build(cls, d, tasks.parse_model)
    assert tasks.parse_model is not patch.stock_parse_model()

    s_sd, o_sd = stock.state_dict(), ours.state_dict()
    assert list(o_sd) == list(s_sd)
    assert [v.shape for v in o_sd.values()] == [v.shape for v in s_sd.values()]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in stock.parameters())
    assert ours.save == stock.save
    assert [m.f for m in ours.model] == [m.f for m in stock.model]
    assert [m.type for m in ours.model] == [m.type for m in stock.model]

    stock.eval(), ours.eval()
    # classifiers expect 224; RT-DETR needs at least 300 anchor cells for its query selection
    size = {tasks.ClassificationModel: 224, tasks.RTDETRDetectionModel: 160}.get(cls, 64)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(2)
        a = _first_tensor(stock(x))
        torch.manual_seed(2)
        b = _first_tensor(ours(x))
    assert torch.equal(a, b)
