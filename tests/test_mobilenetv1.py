"""MobileNetV1 backbone: exact timm architecture at width 1.0, feature parity with timm weights, any width,
fixed-width YAML names, argument checks, fusing, and the shipped YOLO11 YAML."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

from ultralytics_addmodules.nn.common import fuse_modules
from ultralytics_addmodules.nn.mobilenetv1 import MobileNetV1, MobileNetV1_m, MobileNetV1_n, MobileNetV1_s
from ultralytics_addmodules.registry import MultiOutputBackbone, lookup
from ultralytics_addmodules.weights import load_pretrained

timm = pytest.importorskip("timm")
from timm.models.efficientnet import _gen_mobilenet_v1  # noqa: E402

from helpers import (  # noqa: E402
    FUSE_REL,
    PARITY_REL,
    assert_close_to_scale,
    make_mistake_,
    randomize_and_calibrate_,
    train_one_step,
)

FIXED = {MobileNetV1_n: 0.25, MobileNetV1_s: 0.5, MobileNetV1_m: 0.75}


def timm_features(width: float = 1.0) -> nn.Module:
    return _gen_mobilenet_v1("mobilenetv1_100", width, features_only=True, out_indices=(1, 2, 3, 4))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_width_1_is_timm_architecture():
    ref = timm.create_model("mobilenetv1_100", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    ours = MobileNetV1()
    assert n_params(ours) == n_params(ref) == 3_206_976
    assert ours.out_channels == ref.feature_info.channels() == [128, 256, 512, 1024]
    assert list(ours.strides) == ref.feature_info.reduction() == [4, 8, 16, 32]
    assert ours.weight_sources() == {"timm": "mobilenetv1_100"}
    assert isinstance(ours.stem.act, nn.ReLU6)  # timm's MobileNetV1 uses ReLU6 throughout


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75, 1.3])
def test_widths_match_timm_channel_multiplier(width):
    with torch.device("meta"):
        ref, ours = timm_features(width), MobileNetV1(width=width)
    assert (n_params(ours), ours.out_channels) == (n_params(ref), ref.feature_info.channels())
    assert ours.weight_sources() == {}


def test_same_features_as_timm_with_its_weights(tmp_path):
    torch.manual_seed(0)
    ref = randomize_and_calibrate_(timm_features())
    path = tmp_path / "mobilenetv1_100.pt"
    torch.save(ref.state_dict(), path)
    ours = MobileNetV1().eval()
    (report,) = load_pretrained(ours, path, verbose=False)
    assert report.architecture == "timm:mobilenetv1_100"
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert_close_to_scale(got, expected, PARITY_REL, "features vs timm", min_scale=0.1)


@pytest.mark.parametrize("cls,width", [(MobileNetV1, 0.4), *FIXED.items()])
def test_every_width_runs_with_strides_4_to_32(cls, width):
    model = (cls(width=width) if cls is MobileNetV1 else cls()).eval()
    assert model.width == width
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model(x)
    assert [f.shape[1] for f in features] == model.out_channels
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in features] == [(s, s) for s in (4, 8, 16, 32)]


def test_fixed_width_classes_are_picklable_and_registered():
    for cls, width in FIXED.items():
        model = pickle.loads(pickle.dumps(cls()))
        assert type(model) is cls and model.width == width
    for name in ("MobileNetV1", "MobileNetV1_n", "MobileNetV1_s", "MobileNetV1_m"):
        reg = lookup(name)
        assert reg is not None and reg.cls.__name__ == name and isinstance(reg.rule, MultiOutputBackbone)


def test_fixed_width_names_reject_a_width_argument():
    with pytest.raises(ValueError, match=r"MobileNetV1_s has the fixed width 0.5.*got 0.75.*valid: no arguments"):
        MobileNetV1_s(3, 0.75)


@pytest.mark.parametrize("width", [0, -1, "0.5", None, math.inf, True])
def test_bad_width_names_value_and_choices(width):
    with pytest.raises(ValueError, match=r"MobileNetV1 width.*" + repr(width).replace(".", r"\.") + r".*valid"):
        MobileNetV1(width=width)


def test_full_timm_model_converts_and_wrong_width_is_rejected():
    full = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=10)
    ours = MobileNetV1()
    assert ours.load_state_dict(ours.convert_state_dict(full.state_dict(), "timm"), strict=True)
    with pytest.raises(ValueError, match="no published ImageNet weights"):
        load_pretrained(MobileNetV1_s(), "timm", verbose=False)
    with pytest.raises(NotImplementedError, match="torchvision"):
        ours.convert_state_dict(full.state_dict(), "torchvision")


def fused_and_unfused(mistake: str | None = None):
    """Features of a random width-0.5 model before and after fuse_modules(); ``mistake`` breaks the fused copy
    the way a faulty fuse would: "bn_dropped" removes the middle BatchNorm instead of folding it, "bn_eps"
    folds with eps 1e-3 instead of 1e-5."""
    torch.manual_seed(0)
    model = randomize_and_calibrate_(MobileNetV1(width=0.5))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        if mistake:
            make_mistake_(model, mistake)
        assert fuse_modules(model) > 0
        after = model(x)
    return model, before, after


def test_fuse_removes_batchnorm_and_keeps_outputs():
    model, before, after = fused_and_unfused()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert_close_to_scale(after, before, FUSE_REL, "fused features", min_scale=0.1)


@pytest.mark.parametrize("mistake", ["bn_dropped", "bn_eps"])
def test_fuse_tolerance_catches_real_mistakes(mistake):
    _, before, after = fused_and_unfused(mistake)
    with pytest.raises(AssertionError, match="exceeds the bound"):
        assert_close_to_scale(after, before, FUSE_REL, f"fused with {mistake}")


@pytest.mark.slow
def test_shipped_yaml_builds_trains_and_takes_fixed_width_names():
    from copy import deepcopy

    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    model = YOLO("yolo11n-MobileNetV1.yaml").model
    assert isinstance(model.model[0], MobileNetV1) and model.model[0].width == 0.25
    assert model.stride.tolist() == [8, 16, 32]
    assert [type(model.model[i]).__name__ for i in (5, 6)] == ["SPPF", "C2PSA"]
    assert model.model[-1].f == [12, 15, 18]
    train_one_step(model, imgsz=64, nc=80)

    for cls in FIXED:
        cfg = deepcopy(yaml_model_load("yolo11n-MobileNetV1.yaml"))
        cfg["backbone"][0] = [-1, 1, cls.__name__, []]
        built = DetectionModel(cfg, verbose=False).eval()
        assert type(built.model[0]) is cls
        with torch.no_grad():
            preds = built(torch.rand(1, 3, 64, 64))[0]
        assert preds.shape == (1, 84, 64 + 16 + 4)
