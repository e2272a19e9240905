"""UIB block forms and residual; C3_UIB residual, YAML channel rule and fusing."""

from __future__ import annotations

import pytest
import torch
from helpers import FUSE_REL, assert_close_to_scale, make_mistake_, randomize_and_calibrate_
from torch import nn

from ultralytics_addmodules.nn.common import fuse_modules
from ultralytics_addmodules.nn.uib import C3_UIB, LayerScale2d, UniversalInvertedBottleneck
from ultralytics_addmodules.registry import LayerContext, ScaledOutput, lookup


def zero_branch_(uib: UniversalInvertedBottleneck) -> None:
    """Make the UIB branch output exactly zero (its last BN outputs its bias, set to 0)."""
    with torch.no_grad():
        uib.project.bn.weight.zero_()
        uib.project.bn.bias.zero_()


@pytest.mark.parametrize(
    "start, mid, form, spatial",
    [
        (0, 3, "IB", ["mid_dw"]),
        (3, 0, "ConvNeXt", ["start_dw"]),
        (0, 0, "FFN", []),
        (3, 5, "ExtraDW", ["start_dw", "mid_dw"]),
    ],
)
def test_forms_are_selected_by_the_two_kernels(start, mid, form, spatial):
    block = UniversalInvertedBottleneck(16, 16, start, mid, expand_ratio=2.0)
    assert block.form == form
    present = [name for name in ("start_dw", "mid_dw") if not isinstance(getattr(block, name), nn.Identity)]
    assert present == spatial
    assert block.expand.conv.out_channels == 32
    assert block(torch.randn(1, 16, 8, 8)).shape == (1, 16, 8, 8)


@pytest.mark.parametrize("start, mid, strided", [(3, 0, "start_dw"), (0, 3, "mid_dw"), (3, 5, "mid_dw")])
def test_stride_goes_to_one_depthwise_conv(start, mid, strided):
    block = UniversalInvertedBottleneck(16, 24, start, mid, stride=2)
    assert getattr(block, strided).conv.stride == (2, 2)
    assert not block.add
    assert block(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)


def test_strided_ffn_and_bad_groups_are_rejected():
    with pytest.raises(ValueError, match=r"stride 2.*start_dw_kernel=0.*valid"):
        UniversalInvertedBottleneck(16, 16, 0, 0, stride=2)
    with pytest.raises(ValueError, match=r"stride must be 1 or 2, got 3"):
        UniversalInvertedBottleneck(16, 16, 3, 3, stride=3)
    with pytest.raises(ValueError, match=r"groups=3.*valid: a divisor"):
        UniversalInvertedBottleneck(16, 16, groups=3)


def fold_layer_scale(bn_first: bool, mistake: str | None = None):
    """A UIB block with a random layer scale, before and after fusing its parts in either order; ``mistake``
    "layer_scale_dropped" fuses as if the scale were not there (gamma 1)."""
    torch.manual_seed(0)
    block = UniversalInvertedBottleneck(8, 8, 3, 0, layer_scale_init=0.5)
    with torch.no_grad():
        block.layer_scale.gamma.uniform_(-2, 2)
        block.project.bn.running_mean.normal_()
    block.eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        before = block(x)
        if mistake:
            make_mistake_(block, mistake)
        parts = [block.project, block] if bn_first else [block, block.project]
        for part in parts:  # fuse_modules visits parents first; either order must give the same result
            part.fuse()
        after = block(x)
    return block, before, after


@pytest.mark.parametrize("bn_first", [True, False])
def test_layer_scale_folds_before_or_after_the_bn(bn_first):
    block, before, after = fold_layer_scale(bn_first)
    assert not any(isinstance(m, LayerScale2d) for m in block.modules())
    assert_close_to_scale(after, before, FUSE_REL, "fused UIB block", min_scale=0.1)


def test_layer_scale_fold_tolerance_catches_a_dropped_scale():
    _, before, after = fold_layer_scale(True, "layer_scale_dropped")
    with pytest.raises(AssertionError, match="exceeds the bound"):
        assert_close_to_scale(after, before, FUSE_REL, "UIB block fused without its layer scale")


def test_layer_scale_refuses_to_fold_through_an_activation():
    with pytest.raises(ValueError, match="activation"):
        UniversalInvertedBottleneck(8, 8, layer_scale_init=1.0).layer_scale.fold_into(
            UniversalInvertedBottleneck(8, 8).expand
        )


@pytest.mark.parametrize("shortcut", [True, False])
def test_uib_residual(shortcut):
    block = UniversalInvertedBottleneck(16, 16, 3, 3, shortcut=shortcut).eval()
    zero_branch_(block)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
    torch.testing.assert_close(y, x if shortcut else torch.zeros_like(x))


def test_c3_uib_structure_and_channels():
    m = C3_UIB(32, 64, n=3, shortcut=True)
    assert len(m.m) == 3 and all(isinstance(b, UniversalInvertedBottleneck) for b in m.m)
    assert all(b.form == "ExtraDW" and b.add for b in m.m)
    assert m.cv1.conv.out_channels == m.cv2.conv.out_channels == 32
    assert m(torch.randn(1, 32, 16, 16)).shape == (1, 64, 16, 16)


def test_c3_uib_shortcut_really_adds_the_input():
    torch.manual_seed(0)
    with_skip = C3_UIB(16, 32, n=2, shortcut=True).eval()
    without = C3_UIB(16, 32, n=2, shortcut=False).eval()
    without.load_state_dict(with_skip.state_dict())  # same weights: only the residual differs
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(with_skip(x), without(x))

        # With every UIB branch zeroed, shortcut=True makes m the identity and shortcut=False makes it 0.
        for block in (*with_skip.m, *without.m):
            zero_branch_(block)
        a, b = with_skip.cv1(x), with_skip.cv2(x)
        torch.testing.assert_close(with_skip(x), with_skip.cv3(torch.cat((a, b), 1)))
        torch.testing.assert_close(without(x), without.cv3(torch.cat((torch.zeros_like(a), b), 1)))


def test_c3_uib_registered_like_c3():
    reg = lookup("C3_UIB")
    assert reg is not None and reg.cls is C3_UIB
    assert isinstance(reg.rule, ScaledOutput) and reg.rule.repeats_in_args
    ctx = LayerContext(
        index=5, source=-1, repeats=2, ch=[3, 64], prev_c2=64, width=0.25, depth=0.5, max_channels=1024, nc=80,
        scale="n",
    )
    resolved = reg.rule.resolve([256, False], ctx)
    assert resolved.args == [64, 64, 2, False] and resolved.c2 == 64 and resolved.repeats == 1
    m = reg.cls(*resolved.args)
    assert len(m.m) == 2 and not m.m[0].add
    assert m(torch.randn(1, 64, 8, 8)).shape[1] == resolved.c2


def fuse_c3_uib(mistake: str | None = None):
    """A C3_UIB with random calibrated BatchNorms before and after fuse_modules(); ``mistake`` breaks the fused
    copy the way a faulty fuse would (see helpers.make_mistake_)."""
    torch.manual_seed(0)
    m = randomize_and_calibrate_(C3_UIB(16, 32, n=2), example=(4, 16, 8, 8))
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        before = m(x)
        if mistake:
            make_mistake_(m, mistake)
        fuse_modules(m)
        after = m(x)
    return m, before, after


def test_c3_uib_fuses():
    m, before, after = fuse_c3_uib()
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert_close_to_scale(after, before, FUSE_REL, "fused C3_UIB", min_scale=0.1)


@pytest.mark.parametrize("mistake", ["bn_dropped", "bn_eps"])
def test_c3_uib_fuse_tolerance_catches_real_mistakes(mistake):
    _, before, after = fuse_c3_uib(mistake)
    with pytest.raises(AssertionError, match="exceeds the bound"):
        assert_close_to_scale(after, before, FUSE_REL, f"C3_UIB fused with {mistake}")


@pytest.mark.parametrize("name, block_layers", [("yolo11n-C3_UIB.yaml", 8), ("yolov5n-C3_UIB.yaml", 8)])
def test_shipped_yamls_build_and_train(name, block_layers):
    from helpers import train_one_step
    from ultralytics import YOLO

    model = YOLO(name).model
    blocks = [m for m in model.model if isinstance(m, C3_UIB)]
    assert len(blocks) == block_layers
    assert not any(type(m).__name__ in ("C3", "C3k2") for m in model.modules())
    assert model.stride.tolist() == [8, 16, 32]
    train_one_step(model, imgsz=64, nc=80)
