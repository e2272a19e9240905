"""UIB block forms and residual; C3_UIB residual, YAML channel rule and fusing."""

from __future__ import annotations

import pytest
import torch
from helpers import FUSE_REL, assert_close_to_scale, make_mistake_, randomize_and_calibrate_
from torch import nn

from ultralytics_addmodules.nn.common import fuse_modules
from ultralytics_addmodules.nn.uib import C3_UIB, LayerScale2d, UniversalInvertedBottleneck
from ultralytics_addmodules.registry import LayerContext, ModelContext, ScaledOutput, lookup


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
    for b in m.m:  # the tutorial's block: dw 3x3 -> 1x1 (expansion 1) -> dw 3x3 -> 1x1
        assert b.start_dw.conv.kernel_size == b.mid_dw.conv.kernel_size == (3, 3)
        assert b.expand.conv.out_channels == b.project.conv.in_channels == 32
        assert isinstance(b.expand.act, nn.SiLU) and isinstance(b.mid_dw.act, nn.SiLU)
    assert m(torch.randn(1, 32, 16, 16)).shape == (1, 64, 16, 16)


def test_c3_uib_default_block_is_lighter_than_c3s_bottleneck():
    from ultralytics.nn.modules.block import Bottleneck

    c = 64
    uib = C3_UIB(c, 2 * c, n=1).m[0]
    weights = sum(p.numel() for p in uib.parameters())
    assert weights == 2 * c * c + 18 * c + 4 * 2 * c  # two 1x1, two 3x3 depthwise, four BNs
    c3_bottleneck = Bottleneck(c, c, True, 1, k=((1, 1), (3, 3)), e=1.0)  # what C3 runs on the same half
    assert weights < 0.25 * sum(p.numel() for p in c3_bottleneck.parameters())
    heavy = C3_UIB(c, 2 * c, n=1, expand_ratio=4).m[0]  # MobileNetV4's usual ratio: the former default
    assert heavy.expand.conv.out_channels == 4 * c
    assert sum(p.numel() for p in heavy.parameters()) > 3 * weights


def test_c3_uib_expand_ratio_is_the_fifth_yaml_argument():
    reg = lookup("C3_UIB")
    model = ModelContext(nc=80, width=1.0, depth=1.0, max_channels=1024, scale=None)
    ctx = LayerContext(index=3, source=-1, repeats=1, ch=[3, 64], prev_c2=64, model=model)
    resolved = reg.rule.resolve([64, True, 1, 0.5, 4], ctx)
    assert resolved.args == [64, 64, 1, True, 1, 0.5, 4]
    m = reg.cls(*resolved.args)
    assert m.m[0].expand.conv.out_channels == 4 * 32 and m.m[0].add
    assert reg.cls(*reg.rule.resolve([64, True], ctx).args).m[0].expand.conv.out_channels == 32


@pytest.mark.parametrize("bad", [0, -1.0, "four", True, None])
def test_c3_uib_bad_expand_ratio_is_one_bilingual_line(bad):
    with pytest.raises(ValueError) as e:
        C3_UIB(16, 16, 1, True, 1, 0.5, bad)
    message = str(e.value)
    assert "\n" not in message and " | " in message
    zh, en = message.split(" | ")
    assert "扩张比例" in zh and repr(bad) in zh
    assert f"expand_ratio (5th YAML argument) must be a positive number, got {bad!r}" in en and "valid:" in en


OLD_DEFAULT_YAML = """
nc: 2
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, C3_UIB, [32]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, C3_UIB, [32, False, 1, 0.5, 2]]  # an explicit expansion is the user's: never touched
  - [-1, 1, Conv, [32, 3, 2]]
head:
  - [[1, 2, 4], 1, Detect, [nc]]
"""


def save_old_default_checkpoint(tmp_path):
    """A checkpoint as the code before expansion 1 saved it: 4x blocks where the YAML line gives no expansion,
    and a model.yaml without it. Returns (path, the saved model in float32 as stored)."""
    import copy

    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    (tmp_path / "old.yaml").write_text(OLD_DEFAULT_YAML)
    cfg = yaml_model_load(tmp_path / "old.yaml")
    built_as_then = copy.deepcopy(cfg)
    built_as_then["backbone"][1][3] = [32, True, 1, 0.5, 4]
    torch.manual_seed(0)
    model = DetectionModel(built_as_then, verbose=False)
    model.yaml = cfg
    torch.save({"model": copy.deepcopy(model).half(), "train_args": {}}, tmp_path / "old.pt")  # as trainers do
    return tmp_path / "old.pt", copy.deepcopy(model).half().float().eval()


def test_checkpoint_with_expansion_4_blocks_still_loads(tmp_path):
    """Checkpoints pickle the module objects, so a model saved when expansion 4 was the default comes back
    with its own 4x blocks and the same outputs, whatever the default is now."""
    from ultralytics import YOLO

    path, reference = save_old_default_checkpoint(tmp_path)
    loaded = YOLO(str(path)).model.float().eval()
    block = loaded.model[1]
    assert isinstance(block, C3_UIB) and block.m[0].expand.conv.out_channels == 4 * 16
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], reference(x)[0])


def test_pinning_the_expansion_lets_an_old_checkpoint_be_rebuilt(tmp_path):
    """Fine-tuning and resuming rebuild the model from model.yaml and copy weights by shape: after
    pin_c3_uib_expansion the rebuilt model has the checkpoint's 4x blocks, so every tensor transfers."""
    from ultralytics.nn.tasks import DetectionModel

    from ultralytics_addmodules.model_yamls import pin_c3_uib_expansion

    path, _ = save_old_default_checkpoint(tmp_path)
    # Read past Ultralytics' loader (which pins on load, tested below); the file was made by this test.
    weights = torch.load(path, weights_only=False)["model"].float()
    shapes = {k: v.shape for k, v in weights.state_dict().items()}
    unpinned = DetectionModel(weights.yaml, nc=2, verbose=False).state_dict()
    assert any(unpinned[k].shape != shapes[k] for k in shapes)  # what a rebuild without the pin gives
    assert pin_c3_uib_expansion(weights) == 1
    assert weights.yaml["backbone"][1][3] == [32, True, 1, 0.5, 4.0]
    assert weights.yaml["backbone"][3][3] == [32, False, 1, 0.5, 2]
    rebuilt = DetectionModel(weights.yaml, nc=2, verbose=False).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == shapes
    assert pin_c3_uib_expansion(weights) == 0  # idempotent
    assert pin_c3_uib_expansion(DetectionModel(weights.yaml, nc=2, verbose=False)) == 0


def test_loading_an_old_checkpoint_pins_its_expansion(tmp_path):
    from helpers import read_ultralytics_checkpoint
    from ultralytics.nn.tasks import DetectionModel

    path, _ = save_old_default_checkpoint(tmp_path)
    weights = read_ultralytics_checkpoint(path)
    assert weights.yaml["backbone"][1][3] == [32, True, 1, 0.5, 4.0]
    rebuilt = DetectionModel(weights.yaml, nc=2, verbose=False).state_dict()  # what fine-tuning builds
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in weights.state_dict().items()}


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
    model = ModelContext(nc=80, width=0.25, depth=0.5, max_channels=1024, scale="n")
    ctx = LayerContext(index=5, source=-1, repeats=2, ch=[3, 64], prev_c2=64, model=model)
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
