"""Every official model YAML of the installed Ultralytics builds exactly the same model through our registry
parser as through Ultralytics' own parse_model, and the patched entry point leaves stock YAMLs to stock."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch
import ultralytics
import yaml
from ultralytics.nn import tasks

from ultralytics_addmodules import compat, parser, patch

OFFICIAL = sorted((Path(ultralytics.__file__).parent / "cfg" / "models").rglob("*.yaml"))
MODEL_CLASSES = {  # task -> model class, by name so that one table serves every release
    "detect": "DetectionModel",
    "segment": "SegmentationModel",
    "classify": "ClassificationModel",
    "pose": "PoseModel",
    "obb": "OBBModel",
    "depth": "DepthModel",
    "semantic": "SemanticSegmentationModel",
}
OFFICIAL_COUNT = {(8, 3): 45, (8, 4): 66}  # model YAMLs each release ships


def _model_class(d: dict, path: Path):
    stem = path.stem
    if "rtdetr" in stem:
        return tasks.RTDETRDetectionModel
    if "world" in stem:
        return tasks.WorldModel
    if stem.startswith("yoloe"):
        return tasks.YOLOESegModel if "seg" in stem else tasks.YOLOEModel
    return getattr(tasks, MODEL_CLASSES[tasks.guess_model_task(d)])


def _ours(d, ch, verbose=True):
    return parser.parse_model(d, ch, verbose, patch.DIALECT)


def _build(cls, d: dict, parse_model):
    saved = tasks.parse_model
    tasks.parse_model = parse_model
    try:
        torch.manual_seed(0)
        return cls(deepcopy(d), verbose=False)
    finally:
        tasks.parse_model = saved


def _first_tensor(out):
    while isinstance(out, (list, tuple, dict)):
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out


def _cases():
    for path in OFFICIAL:
        d = yaml.safe_load(path.read_text())
        scales = list(d.get("scales") or {None: None})[:2]  # n and s where the YAML has scales
        for scale in scales:
            yield pytest.param(path, scale, id=f"{path.parent.name}-{path.stem}-{scale or 'fixed'}")


def test_all_official_yamls_are_covered():
    release = compat.version_tuple(ultralytics.__version__)[:2]
    assert len(OFFICIAL) == OFFICIAL_COUNT[release]  # a wrong glob must not pass silently


@pytest.mark.slow
@pytest.mark.every_release
@pytest.mark.parametrize("path,scale", list(_cases()))
def test_same_model_as_stock(path: Path, scale):
    d = tasks.yaml_model_load(path)
    d["yaml_file"] = str(path)
    if scale:
        d["scale"] = scale
    cls = _model_class(d, path)
    try:
        stock = _build(cls, d, patch.stock_parse_model())
    except Exception as e:  # e.g. YOLOE needs a text model that is only downloaded
        pytest.skip(f"stock Ultralytics cannot build {path.name} offline: {type(e).__name__}: {e}")
    ours = _build(cls, d, _ours)
    assert not parser.uses_addon_modules(d, patch.DIALECT)  # the patched entry point gives it to stock

    s_sd, o_sd = stock.state_dict(), ours.state_dict()
    assert list(o_sd) == list(s_sd)
    assert [v.shape for v in o_sd.values()] == [v.shape for v in s_sd.values()]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in stock.parameters())
    assert ours.save == stock.save
    assert [m.f for m in ours.model] == [m.f for m in stock.model]
    assert [m.type for m in ours.model] == [m.type for m in stock.model]
    head = stock.model[-1]
    if hasattr(head, "legacy"):  # 8.4: v8-style or v11-style head, decided while parsing
        assert ours.model[-1].legacy == head.legacy

    stock.eval(), ours.eval()
    # classifiers expect 224; RT-DETR needs at least 300 anchor cells for its query selection
    size = 224 if cls is tasks.ClassificationModel else 160 if cls is tasks.RTDETRDetectionModel else 64
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(2)
        a = _first_tensor(stock(x))
        torch.manual_seed(2)
        b = _first_tensor(ours(x))
    assert torch.equal(a, b)
