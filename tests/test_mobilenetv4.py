"""MobileNetV4 backbones: exact timm architecture at width 1.0, feature parity with timm weights, any width,
argument checks, fusing, timm key mapping."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from ultralytics_addmodules.nn.common import fuse_modules
from ultralytics_addmodules.nn.mobilenetv4 import (
    VARIANTS,
    MobileNetV4,
    MobileNetV4ConvLarge,
    MobileNetV4ConvMedium,
    MobileNetV4ConvSmall,
    MobileNetV4HybridLarge,
    MobileNetV4HybridMedium,
)
from ultralytics_addmodules.nn.uib import LayerScale2d
from ultralytics_addmodules.registry import MultiOutputBackbone, lookup
from ultralytics_addmodules.weights import load_pretrained

timm = pytest.importorskip("timm")

CLASSES = {
    "conv_small": MobileNetV4ConvSmall,
    "conv_medium": MobileNetV4ConvMedium,
    "conv_large": MobileNetV4ConvLarge,
    "hybrid_medium": MobileNetV4HybridMedium,
    "hybrid_large": MobileNetV4HybridLarge,
}
WIDTHS = (0.25, 0.5, 0.75, 1.0, 1.5)


def timm_features(variant: str, **kwargs) -> nn.Module:
    return timm.create_model(
        VARIANTS[variant].timm_name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4), **kwargs
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine params, layer scales and BN running statistics (calibrated on random images in
    train mode, so activations stay O(1) and an absolute tolerance means something), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("gamma"):  # layer scale, 1e-5 at init would hide the branch
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 64, 96, generator=g))
    return model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_width_1_is_timm_architecture(variant):
    with torch.device("meta"):
        ref = timm_features(variant)
        ours = CLASSES[variant]()
    assert n_params(ours) == n_params(ref)
    assert ours.out_channels == ref.feature_info.channels()
    assert list(ours.strides) == ref.feature_info.reduction() == [4, 8, 16, 32]
    assert ours.weight_sources() == {"timm": VARIANTS[variant].timm_name}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_same_features_as_timm_with_its_weights(variant, tmp_path):
    torch.manual_seed(0)
    ref = randomize_(timm_features(variant))
    path = tmp_path / "timm.pt"
    torch.save(ref.state_dict(), path)

    ours = CLASSES[variant]().eval()
    (report,) = load_pretrained(ours, path, verbose=False)  # strict: every tensor matched, right shapes
    assert report.architecture == f"timm:{VARIANTS[variant].timm_name}"
    x = torch.randn(2, 3, 64, 96)  # non-square: catches H/W mix-ups in the attention reshapes
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert [t.shape for t in got] == [t.shape for t in expected]
    for e, o in zip(expected, got):
        assert e.abs().max() > 0.1  # the comparison is not between two near-zero maps
        assert (e - o).abs().max() < 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_widths_match_timm_channel_multiplier(variant):
    from timm.models.mobilenetv3 import _gen_mobilenet_v4

    for width in (0.25, 0.5, 0.75, 1.5):
        with torch.device("meta"):
            ref = _gen_mobilenet_v4(
                VARIANTS[variant].timm_name, channel_multiplier=width, features_only=True, out_indices=(1, 2, 3, 4)
            )
            ours = CLASSES[variant](width=width)
        assert (n_params(ours), ours.out_channels) == (n_params(ref), ref.feature_info.channels()), width
        assert ours.weight_sources() == {}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_and_width_runs(variant, width):
    model = CLASSES[variant](width=width).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model(x)
    assert len(features) == 4
    assert [f.shape[1] for f in features] == model.out_channels
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in features] == [(s, s) for s in (4, 8, 16, 32)]
    assert all(c % 8 == 0 for c in model.out_channels)


def test_unknown_variant_names_value_and_choices():
    with pytest.raises(ValueError, match=r"'conv_tiny'.*conv_small.*hybrid_large"):
        MobileNetV4("conv_tiny")


@pytest.mark.parametrize("width", [0, -0.5, "0.5", None, math.nan, True])
def test_bad_width_names_value_and_choices(width):
    with pytest.raises(ValueError, match=r"width.*up to 16, got " + re.escape(repr(width)) + r"; valid: e\.g\."):
        MobileNetV4ConvSmall(width=width)


def test_state_dict_of_another_variant_is_rejected():
    with torch.device("meta"):
        small_sd = timm_features("conv_small").state_dict()
        medium = MobileNetV4ConvMedium()
    with pytest.raises(ValueError, match="mobilenetv4_conv_medium"):
        medium.convert_state_dict(small_sd, "timm")


def test_full_timm_model_keys_convert_and_head_is_dropped():
    ref = timm.create_model("mobilenetv4_hybrid_medium", pretrained=False, num_classes=10)
    sd = ref.state_dict()
    assert any(k.startswith(("conv_head", "classifier")) for k in sd)
    ours = MobileNetV4HybridMedium()
    converted = ours.convert_state_dict(sd, "timm")
    result = ours.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("variant", ["conv_small", "conv_medium", "hybrid_medium", "hybrid_large"])
def test_fuse_removes_batchnorm_and_keeps_outputs(variant):
    torch.manual_seed(0)
    model = randomize_(CLASSES[variant](width=0.5))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        assert fuse_modules(model) > 0
        after = model(x)
    assert not any(isinstance(m, (nn.BatchNorm2d, LayerScale2d)) for m in model.modules())
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_registered_as_multi_output_backbones():
    for cls in CLASSES.values():
        reg = lookup(cls.__name__)
        assert reg is not None and reg.cls is cls
        assert isinstance(reg.rule, MultiOutputBackbone)


# ---------------------------------------------------------------------------------------------------------
# Through Ultralytics: the shipped YAML, every variant in it, training, pretrained weights named in the YAML
# ---------------------------------------------------------------------------------------------------------
def yolo11_with(backbone: str, args: list):
    from copy import deepcopy

    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = deepcopy(yaml_model_load("yolo11n-MobileNetV4.yaml"))
    cfg["backbone"][0] = [-1, 1, backbone, args]
    return DetectionModel(cfg, verbose=False)


def test_shipped_yaml_builds_trains_and_fuses():
    from helpers import train_one_step
    from ultralytics import YOLO

    model = YOLO("yolo11n-MobileNetV4.yaml").model
    backbone = model.model[0]
    assert isinstance(backbone, MobileNetV4ConvSmall) and backbone.width == 0.5
    assert model.stride.tolist() == [8, 16, 32]
    assert type(model.model[5]).__name__ == "SPPF" and type(model.model[6]).__name__ == "C2PSA"
    assert model.model[-1].f == [12, 15, 18]
    train_one_step(model, imgsz=64, nc=80)

    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        fuse_modules(model)
        after = model(x)[0]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.model[0].modules())
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_in_the_yaml(variant):
    model = yolo11_with(CLASSES[variant].__name__, [0.25]).eval()
    assert model.stride.tolist() == [8, 16, 32]
    assert model.model[5].cv1.conv.in_channels == model.model[0].out_channels[3]  # SPPF reads P5
    with torch.no_grad():
        preds = model(torch.rand(1, 3, 64, 96))[0]
    assert preds.shape == (1, 84, (64 * 96) // 64 + (64 * 96) // 256 + (64 * 96) // 1024)


def test_pretrained_file_named_in_yaml_is_loaded(tmp_path):
    ref = timm_features("conv_small")
    with torch.no_grad():
        ref.conv_stem.weight.fill_(0.125)
    path = tmp_path / "mnv4s.pt"
    torch.save(ref.state_dict(), path)
    model = yolo11_with("MobileNetV4ConvSmall", [1.0, str(path)])
    assert torch.equal(model.model[0].stem.conv.weight, ref.conv_stem.weight)
    with pytest.raises(ValueError, match="no published ImageNet weights"):
        yolo11_with("MobileNetV4ConvSmall", [0.5, str(path)])
