"""fp16-safe fusing: a fused model keeps every conv output channel inside float16's normal range, and its fp16
error is no worse than the unfused model's, for every backbone family and all five MobileNetV4 variants.

fp16 error is measured two ways: weights rounded to float16 with float32 compute (how an fp16 export or TFLite
float16 stores a model), and ``.half()`` compute (how Ultralytics predicts and validates on a GPU; the CPU runs
it too). The statistic is the mean absolute error relative to the mean magnitude, averaged over P2..P5.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ultralytics_addmodules.nn.common import ConvBNAct, LayerScale2d, fuse_modules
from ultralytics_addmodules.nn.efficientnet import EfficientNetV1, EfficientNetV2
from ultralytics_addmodules.nn.fuse import FP16_TINY, fold_conv_batchnorm
from ultralytics_addmodules.nn.mobilenetv1 import MobileNetV1_n
from ultralytics_addmodules.nn.mobilenetv4 import VARIANTS, MobileMQA, MobileNetV4
from ultralytics_addmodules.nn.uib import C3_UIB, UniversalInvertedBottleneck

CASES = {
    "MobileNetV1_n": (lambda: MobileNetV1_n(), 3),
    **{f"MobileNetV4-{v}": (lambda v=v: MobileNetV4(v, width=0.25), 3) for v in VARIANTS},
    "EfficientNetV1-b0": (lambda: EfficientNetV1(width=0.25, depth=0.5), 3),
    "EfficientNetV2-s": (lambda: EfficientNetV2(width=0.25, depth=0.5), 3),
    "C3_UIB": (lambda: C3_UIB(16, 32, n=2), 16),
    "TimmBackbone": (lambda: timm_backbone("mobilenetv3_small_050"), 3),
}
HYBRIDS = [f"MobileNetV4-{v}" for v in VARIANTS if "hybrid" in v]
BOTH = ("fp16 weights", "half compute")
# (family, state, fp16 modes compared). "calibrated": BatchNorm statistics as after training, layer scales as
# built (1e-5); "trained": hybrid layer scales also as after training (the 15-epoch run in docs/mobilenetv4.md
# ends with per-channel scales from about 1e-6 to 1e-2); "as built": the model as constructed, which is what
# the unsafe fold broke (fused weights of about 1e-7). A hybrid as built is not compared in half compute: its
# P4/P5 are about 1e-13/1e-20 before training, below float16's range whether fused or not.
STATES = [(name, "calibrated", BOTH) for name in CASES] + [(name, "trained", BOTH) for name in HYBRIDS] + [
    (name, "as built", ("fp16 weights",)) for name in HYBRIDS]
SLOW = {"MobileNetV4-conv_medium", "MobileNetV4-conv_large", "MobileNetV4-hybrid_large", "EfficientNetV2-s"}
# Two equivalent parameterisations rounded to float16 differ by chance (fused / unfused error measured 0.5-1.16
# over seeds); the unsafe fold this guards against made the hybrids' error 12-17x the unfused one.
ROUNDING_SPREAD = 1.25


def timm_backbone(name: str) -> nn.Module:
    pytest.importorskip("timm")
    from ultralytics_addmodules.nn.timm_backbone import TimmBackbone

    return TimmBackbone(3, name)


def calibrate_(model: nn.Module, in_channels: int, state: str, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and BN statistics measured on random images (train mode), as a trained
    model has them: a BN after a small layer scale learns the small variance. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    if state == "as built":
        return model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
            elif isinstance(m, LayerScale2d) and state == "trained":  # log-uniform in [1e-6, 1e-2]
                m.gamma.copy_(torch.exp(torch.rand(m.gamma.shape, generator=g) * math.log(1e4) + math.log(1e-6)))
        model.train()
        for _ in range(2):
            model(torch.randn(4, in_channels, 64, 64, generator=g))
    return model.eval()


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        y = model(x)
    return [y] if isinstance(y, torch.Tensor) else list(y)


def fp16_weights(model: nn.Module) -> nn.Module:
    """A copy whose parameters and buffers are rounded to float16 (kept in float32 for the compute)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in [*rounded.parameters(), *rounded.buffers()]:
            if t.is_floating_point():
                t.copy_(t.half().float())
    return rounded


def relative_error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return sum(((g.float() - r).abs().mean() / r.abs().mean()).item() for g, r in zip(got, ref)) / len(ref)


def fp16_errors(model: nn.Module, x: torch.Tensor, ref: list[torch.Tensor], modes) -> dict[str, float]:
    compute = {"fp16 weights": lambda: outputs(fp16_weights(model), x),
               "half compute": lambda: outputs(copy.deepcopy(model).half(), x.half())}
    return {mode: relative_error(compute[mode](), ref) for mode in modes}


def subnormal_channels(model: nn.Module) -> list[str]:
    """Conv output channels whose largest weight is non-zero but below float16's smallest normal number."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            largest = m.weight.detach().abs().flatten(1).amax(1)
            found += [f"{name}[{c}]" for c in torch.nonzero((largest > 0) & (largest < FP16_TINY)).flatten().tolist()]
    return found


@pytest.fixture(scope="module", params=[pytest.param(s, id=f"{s[0]}-{s[1]}".replace(" ", "_"),
                                                     marks=[pytest.mark.slow] if s[0] in SLOW else [])
                                        for s in STATES])
def measured(request):
    """(unfused errors, fused errors, fused model) of one family in one state, built once for its tests."""
    name, state, modes = request.param
    build, in_channels = CASES[name]
    torch.manual_seed(0)
    model = calibrate_(build(), in_channels, state)
    x = torch.rand(2, in_channels, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = outputs(model, x)
    fused = copy.deepcopy(model)
    assert fuse_modules(fused) > 0
    for a, b in zip(outputs(fused, x), ref):  # fusing itself changes float32 rounding only
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    return fp16_errors(model, x, ref, modes), fp16_errors(fused, x, ref, modes), fused


def test_fused_weights_stay_in_fp16_normal_range(measured):
    *_, fused = measured
    assert subnormal_channels(fused) == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


def test_fused_fp16_error_is_no_worse_than_unfused(measured):
    unfused, fused, _ = measured
    for mode in unfused:
        assert 0 < unfused[mode] < 0.05  # a real, small fp16 error: the comparison means something
        assert fused[mode] <= ROUNDING_SPREAD * unfused[mode], (mode, fused[mode], unfused[mode])


# ---------------------------------------------------------------------------------------------------------
# The mechanism: a scale whose fold would leave float16's normal range stays its own multiply
# ---------------------------------------------------------------------------------------------------------
def test_layer_scale_is_folded_only_where_fp16_stays_normal():
    torch.manual_seed(0)
    for gamma, folded in ((1e-5, False), (0.5, True)):
        block = UniversalInvertedBottleneck(16, 16, 3, 3, layer_scale_init=gamma).eval()
        attention = MobileMQA(16, 16, num_heads=2, key_dim=8, layer_scale_init=gamma).eval()
        for module, x in ((block, torch.randn(1, 16, 8, 8)), (attention, torch.randn(1, 16, 8, 8))):
            with torch.no_grad():
                before = module(x)
                fuse_modules(module)
                after = module(x)
            assert isinstance(module.layer_scale, nn.Identity) is folded
            assert subnormal_channels(module) == []
            torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_batchnorm_whose_fold_would_underflow_is_kept():
    torch.manual_seed(0)
    layer = ConvBNAct(8, 4, 3).eval()
    with torch.no_grad():
        layer.bn.weight[1] = 1e-7  # a dead channel: folded, its weights would be about 1e-8
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        before = layer(x)
        layer.fuse()
        torch.testing.assert_close(layer(x), before)
    assert isinstance(layer.bn, nn.BatchNorm2d) and subnormal_channels(layer) == []

    plain = nn.Sequential(nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        plain[1].weight[2] = 1e-7
    assert fold_conv_batchnorm(plain, x) == 0 and isinstance(plain[1], nn.BatchNorm2d)
    with torch.no_grad():
        plain[1].weight[2] = 0.5
    assert fold_conv_batchnorm(plain, x) == 1
