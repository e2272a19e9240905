"""Every bad model YAML gets one clear line naming the layer and the bad value, and nothing leaks from a failed
build (issue 16). Table-driven: each case changes a known-good YAML in one place."""

from __future__ import annotations

import copy
import math
from typing import Callable

import pytest
import torch
import yaml
from helpers import REPO
from ultralytics.nn import tasks
from ultralytics.nn.modules import Conv

from ultralytics_addmodules import ModelYAMLError

OURS = yaml.safe_load((REPO / "yaml" / "yolo11-MobileNetV4.yaml").read_text())
C3UIB = yaml.safe_load((REPO / "yaml" / "yolo11-C3_UIB.yaml").read_text())
STOCK = tasks.yaml_model_load("yolo11n.yaml")  # an official YAML: stock parse_model builds it
V5_HEADER = {"nc": 2, "depth_multiple": 0.33, "width_multiple": 0.25}


def _set(base: dict, index: int, field: int, value) -> dict:
    """A copy of ``base`` with one field of the line that builds layer ``index`` changed (in OURS the backbone
    line expands to layers 0-4, so layer 5 is line 1)."""
    d = copy.deepcopy(base)
    lines = d["backbone"] + d["head"]
    line = lines[index - 4] if base is OURS and index >= 5 else lines[index]
    line[field] = value
    return d


def _with(base: dict, **changes) -> dict:
    d = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            d.pop(key, None)
        else:
            d[key] = value
    return d


def _backbone(*lines) -> dict:
    d = copy.deepcopy(OURS)
    d["backbone"] = [list(line) for line in lines] + d["backbone"][1:]
    return d


CASES: list[tuple[str, Callable[[], dict], tuple[str, ...]]] = [
    # backbone arguments (width bounds are checked before any memory is allocated)
    ("width-huge", lambda: _set(OURS, 0, 3, [1e6]), ("layer 0", "1000000.0", "16")),
    ("width-zero", lambda: _set(OURS, 0, 3, [0]), ("layer 0", "got 0")),
    ("width-negative", lambda: _set(OURS, 0, 3, [-0.5]), ("layer 0", "-0.5")),
    ("width-nan", lambda: _set(OURS, 0, 3, [float("nan")]), ("layer 0", "nan")),
    ("width-string", lambda: _set(OURS, 0, 3, ["wide"]), ("layer 0", "'wide'")),
    ("width-bool", lambda: _set(OURS, 0, 3, [True]), ("layer 0", "True")),
    ("backbone-too-many-args", lambda: _set(OURS, 0, 3, [0.5, False, 7]),
     ("layer 0", "[0.5, False, 7]", "[width=1.0, pretrained=None]")),
    ("efficientnet-version", lambda: _backbone([-1, 1, "efficient", ["efficientnet-b9"]]),
     ("layer 0", "'efficientnet-b9'", "efficientnet-b0")),
    ("efficientnet-v2-version", lambda: _backbone([-1, 1, "efficientnet_v2", ["efficientnet_v2_q"]]),
     ("layer 0", "'efficientnet_v2_q'", "efficientnet_v2_s")),
    ("mobilenetv1-fixed-width-arg", lambda: _backbone([-1, 1, "MobileNetV1_n", [0.5]]), ("layer 0", "0.5")),
    # indices
    ("concat-index-99", lambda: _set(OURS, 8, 0, [-1, 99]), ("layer 8", "99")),
    ("concat-index-minus-50", lambda: _set(OURS, 8, 0, [-1, -50]), ("layer 8", "-50")),
    ("forward-reference", lambda: _set(OURS, 8, 0, [-1, 12]), ("layer 8", "12", "0..7")),
    ("backbone-layer-zero", lambda: _set(OURS, 8, 0, [-1, 0]), ("layer 8", "use layers 1-4")),
    ("first-layer-from", lambda: _set(OURS, 0, 0, 3), ("layer 0", "from")),
    ("empty-from", lambda: _set(OURS, 8, 0, []), ("head[1]", "[]")),
    # shapes and placement
    ("p2-where-p4", lambda: _set(OURS, 8, 0, [-1, 1]), ("layer 8", "P2", "layer 7")),
    ("conv-before-backbone", lambda: _backbone([-1, 1, "Conv", [16, 3, 2]], [-1, 1, "MobileNetV4ConvSmall", [0.5]]),
     ("layer 1", "first line")),
    ("second-backbone", lambda: _backbone([-1, 1, "MobileNetV4ConvSmall", [0.5]], [-1, 1, "MobileNetV4ConvSmall", [0.5]]),
     ("layer 5", "only one")),
    ("c2psa-after-backbone", lambda: _backbone([-1, 1, "MobileNetV4ConvSmall", [0.5]], [-1, 2, "C2PSA", [1024]],
                                               [-1, 2, "C2PSA", [1024]]),
     ("layer 5", "C2PSA", "P5", "AssertionError")),
    # channel counts and header
    ("c3uib-zero-channels", lambda: _set(C3UIB, 2, 3, [0, False, 0.25]), ("layer 2", "0")),
    ("conv-channels-huge", lambda: _set(OURS, 13, 3, [10**9, 3, 2]), ("layer 13", "1000000000")),
    ("nc-zero", lambda: _with(OURS, nc=0), ("nc", "0")),
    ("nc-string", lambda: _with(OURS, nc="eighty"), ("nc", "'eighty'")),
    ("scale-unknown", lambda: _with(OURS, scale="q"), ("'q'", "n, s, m, l, x")),
    ("scales-entry-short", lambda: _with(OURS, scale="n", scales={"n": [0.5, 0.25]}), ("scales.n", "[0.5, 0.25]")),
    ("scales-width-nan", lambda: _with(OURS, scale="n", scales={"n": [0.5, float("nan"), 1024]}), ("scales.n", "nan")),
    ("scales-not-mapping", lambda: _with(OURS, scales=[1, 2]), ("scales",)),
    ("width-multiple-huge", lambda: _with(_with(STOCK, scales=None), width_multiple=1e9), ("width_multiple", "1000000000")),
    ("depth-multiple-negative", lambda: _with(_with(STOCK, scales=None), depth_multiple=-1), ("depth_multiple", "-1")),
    ("activation-number", lambda: _with(OURS, activation=5), ("activation", "5")),
    ("activation-function", lambda: _with(OURS, activation="nn.functional.relu"), ("nn.functional.relu",)),
    ("activation-eval", lambda: _with(STOCK, activation="__import__('os').getcwd()"), ("__import__",)),
    # structure
    ("from-string", lambda: _set(OURS, 8, 0, "-1"), ("head[1]", "'-1'")),
    ("repeats-string", lambda: _set(OURS, 9, 1, "2"), ("head[2]", "'2'")),
    ("repeats-zero", lambda: _set(OURS, 9, 1, 0), ("head[2]", "got 0")),
    ("repeats-huge", lambda: _set(OURS, 9, 1, 10**6), ("head[2]", "1000000")),
    ("module-number", lambda: _set(OURS, 9, 2, 5), ("head[2]", "got 5")),
    ("args-not-list", lambda: _set(OURS, 9, 3, "abc"), ("head[2]", "'abc'")),
    ("three-fields", lambda: _with(OURS, head=[[-1, 1, "Conv"]] + OURS["head"]), ("head[0]", "[-1, 1, 'Conv']")),
    ("missing-head", lambda: _with(OURS, head=None), ("head", "missing")),
    ("backbone-mapping", lambda: _with(OURS, backbone={"a": 1}), ("backbone", "dict")),
    ("empty", lambda: {}, ("empty",)),
    # names and constructor arguments
    ("unknown-module", lambda: _set(OURS, 0, 2, "MobileNetV4ConvSmal"), ("layer 0", "'MobileNetV4ConvSmal'", "MobileNetV4ConvSmall")),
    ("miscased-module", lambda: _set(OURS, 0, 2, "mobilenetv4convsmall"), ("layer 0", "MobileNetV4ConvSmall")),
    ("upsample-extra-args", lambda: _set(OURS, 10, 3, [None, 2, "nearest", 5, 6, 7]), ("layer 10", "nn.Upsample", "nearest")),
    ("sppf-extra-args", lambda: _set(OURS, 5, 3, [1024, 5, 3, True, 7, 7]), ("layer 5", "SPPF", "[from, repeats, SPPF, [c2")),
    # stock YAMLs (no add-on module): structure checks first, then the layer is named where stock would crash
    ("stock-index", lambda: _set(STOCK, 12, 0, [-1, 40]), ("layer 12", "40")),
    ("stock-upsample-args", lambda: _set(STOCK, 11, 3, [None, 2, "nearest", 5, 6, 7]), ("layer 11", "nn.Upsample")),
    ("stock-shapes", lambda: _set(STOCK, 12, 0, [-1, 2]), ("layer 12", "layer 11", "layer 2")),
    ("stock-unknown", lambda: _set(STOCK, 2, 2, "C3K2"), ("layer 2", "'C3K2'", "C3k2")),
]


@pytest.mark.parametrize("make,expected", [pytest.param(m, e, id=i) for i, m, e in CASES])
def test_bad_yaml_gets_one_clear_line(make, expected):
    d = make()
    default_act = Conv.default_act
    with pytest.raises(ModelYAMLError) as e:
        tasks.DetectionModel(d, verbose=False)
    message = str(e.value)
    assert "\n" not in message, message
    assert " | " in message and any("\u4e00" <= ch <= "\u9fff" for ch in message.split(" | ")[0]), message
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"
    assert Conv.default_act is default_act


def test_at_least_forty_cases():
    assert len(CASES) >= 40


def test_failed_build_leaves_nothing_behind():
    stock_before = tasks.DetectionModel(copy.deepcopy(STOCK), verbose=False)
    bad = _with(_set(OURS, 8, 0, [-1, 99]), activation="nn.ReLU()")
    with pytest.raises(ModelYAMLError):
        tasks.DetectionModel(bad, verbose=False)
    stock_after = tasks.DetectionModel(copy.deepcopy(STOCK), verbose=False)
    assert type(stock_after.model[0].act) is type(stock_before.model[0].act) is torch.nn.SiLU
    assert [(k, v.shape) for k, v in stock_after.state_dict().items()] == \
        [(k, v.shape) for k, v in stock_before.state_dict().items()]


ODD_WIDTHS = [
    pytest.param(name, args, width, id=f"{name}-{width}", marks=() if (name, width) == ("MobileNetV4ConvSmall", 0.35)
                 else pytest.mark.slow)
    for name, args in [("MobileNetV1", []), ("MobileNetV4ConvSmall", []), ("efficient", ["efficientnet-b0"]),
                       ("efficientnet_v2", ["efficientnet_v2_s"])]
    for width in (0.3, 0.6, 1.25, 0.35)
]


@pytest.mark.parametrize("name,args,width", ODD_WIDTHS)
def test_odd_widths_build_and_run(name, args, width):
    """Widths the published tutorial warns 'may error' build, run and keep strides 8/16/32."""
    d = _backbone([-1, 1, name, [*args, width]] if args else [-1, 1, name, [width]])
    d["nc"] = 3
    m = tasks.DetectionModel(d, verbose=False).eval()
    assert m.stride.tolist() == [8.0, 16.0, 32.0]
    with torch.no_grad():
        y = m(torch.rand(1, 3, 64, 96))
    y = y[0] if isinstance(y, (list, tuple)) else y
    assert y.shape[1] == 4 + 3 and math.isfinite(float(y.abs().sum()))
