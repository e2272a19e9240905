"""EfficientNet V1/V2 backbones: exact timm architecture for every version, feature parity with timm and
torchvision weights (BatchNorm eps carried over), width/depth scaling, argument checks, drop path, fusing,
and the shipped YOLO11 YAMLs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ultralytics_addmodules.nn.common import fuse_modules
from ultralytics_addmodules.nn.efficientnet import (
    EFFICIENTNET_V1,
    EFFICIENTNET_V2,
    EfficientNetV1,
    EfficientNetV2,
    FusedMBConv,
    MBConv,
)
from ultralytics_addmodules.registry import MultiOutputBackbone, lookup
from ultralytics_addmodules.weights import load_pretrained

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from timm.models import efficientnet as timm_effnet  # noqa: E402

from helpers import (  # noqa: E402
    FUSE_REL,
    PARITY_REL,
    Float32Reference,
    assert_close_to_scale,
    assert_matches_float32_reference,
    make_mistake_,
    randomize_and_calibrate_,
    train_one_step,
)

VERSIONS = [(EfficientNetV1, v) for v in EFFICIENTNET_V1] + [(EfficientNetV2, v) for v in EFFICIENTNET_V2]
BIG = {"efficientnet-b6", "efficientnet-b7", "efficientnet-b8", "efficientnet-l2", "efficientnet_v2_l",
       "efficientnet_v2_xl"}
OUT_INDICES = (1, 2, 3, 4)


def spec_of(cls, version):
    return cls.versions[version]


def timm_features(cls, version: str, width: float = 1.0, depth: float = 1.0) -> nn.Module:
    """timm's model of this version with our extra multipliers applied the way our builder does."""
    spec = spec_of(cls, version)
    if width == depth == 1.0:
        return timm.create_model(spec.timm_name, pretrained=False, features_only=True, out_indices=OUT_INDICES)
    kwargs = dict(channel_multiplier=spec.width * width, depth_multiplier=spec.depth * depth,
                  features_only=True, out_indices=OUT_INDICES)
    if cls is EfficientNetV1:
        return timm_effnet._gen_efficientnet(spec.timm_name, **kwargs)
    generator = getattr(timm_effnet, "_gen_" + spec.timm_name)  # _gen_efficientnetv2_s, ...
    return generator(spec.timm_name, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,version", VERSIONS, ids=[v for _, v in VERSIONS])
def test_width_1_is_timm_architecture(cls, version):
    with torch.device("meta"):
        ref, ours = timm_features(cls, version), cls(version=version)
    assert n_params(ours) == n_params(ref)
    assert ours.out_channels == ref.feature_info.channels()
    assert list(ours.strides) == ref.feature_info.reduction() == [4, 8, 16, 32]
    spec = spec_of(cls, version)
    expected = {"timm": spec.timm_name, **({"torchvision": spec.torchvision_name} if spec.torchvision_name else {})}
    assert ours.weight_sources() == expected


@pytest.mark.parametrize(
    "cls,version,width,depth",
    [
        (EfficientNetV1, "efficientnet-b0", 0.25, 0.5),  # the tutorial's setting
        (EfficientNetV1, "efficientnet-b3", 0.5, 0.75),
        (EfficientNetV1, "efficientnet-b1", 1.5, 1.3),
        (EfficientNetV2, "efficientnet_v2_s", 0.25, 0.5),
        (EfficientNetV2, "efficientnet_v2_m", 0.5, 0.33),
    ],
)
def test_width_and_depth_multiply_the_version_coefficients(cls, version, width, depth):
    with torch.device("meta"):
        ref, ours = timm_features(cls, version, width, depth), cls(version=version, width=width, depth=depth)
    assert (n_params(ours), ours.out_channels) == (n_params(ref), ref.feature_info.channels())
    assert ours.weight_sources() == {}


def test_depth_rounds_repeats_up():
    blocks = lambda model: sum(len(stage) for stage in model.stages)  # noqa: E731
    # B0 repeats 1, 2, 2, 3, 3, 4, 1: ceil(r * 0.5) = 1, 1, 1, 2, 2, 2, 1 and ceil(r * 0.01) = 1 each.
    assert blocks(EfficientNetV1(depth=0.5)) == 10
    assert blocks(EfficientNetV1(depth=0.01)) == 7
    with torch.device("meta"):
        assert blocks(EfficientNetV1(3, "efficientnet-b1")) == 2 + 3 + 3 + 4 + 4 + 5 + 2  # ceil(r * 1.1)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("cls,version", VERSIONS, ids=[v for _, v in VERSIONS])
def test_every_version_and_width_builds_and_runs(cls, version, width):
    x = torch.randn(1, 3, 64, 96)
    if version in BIG:  # shapes only, on the meta device (b7 alone has 64 M parameters, L2 467 M)
        with torch.device("meta"):
            model = cls(version=version, width=width).eval()
            features = model(x.to("meta"))
    else:
        model = cls(version=version, width=width).eval()
        with torch.no_grad():
            features = model(x)
    assert [f.shape[1] for f in features] == model.out_channels
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in features] == [(s, s) for s in (4, 8, 16, 32)]
    assert all(c % 8 == 0 for c in model.out_channels)


# ---------------------------------------------------------------------------------------------------------
# Weights: timm and torchvision
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "cls,version",
    [(EfficientNetV1, f"efficientnet-b{i}") for i in range(4)] + [(EfficientNetV2, "efficientnet_v2_s")],
    ids=[f"efficientnet-b{i}" for i in range(4)] + ["efficientnet_v2_s"],
)
def test_same_features_as_timm_with_its_weights(cls, version, tmp_path):
    torch.manual_seed(0)
    ref = randomize_and_calibrate_(timm_features(cls, version))
    path = tmp_path / "timm.pt"
    torch.save(ref.state_dict(), path)
    ours = cls(version=version).eval()
    (report,) = load_pretrained(ours, path, verbose=False)  # strict: every tensor matched, right shapes
    assert report.architecture == f"timm:{spec_of(cls, version).timm_name}"
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert_close_to_scale(ours(x), ref(x), PARITY_REL, f"{version} features vs timm", min_scale=0.1)


def torchvision_features(model: nn.Module, x: torch.Tensor, channels: list[int]) -> list[torch.Tensor]:
    """The last torchvision stage output at each stride 4/8/16/32 (the stage ends our P2..P5 are cut at)."""
    outputs = []
    hooks = [stage.register_forward_hook(lambda m, i, o: outputs.append(o)) for stage in model.features[1:-1]]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [[o for o in outputs if x.shape[-1] // o.shape[-1] == s][-1] for s in (4, 8, 16, 32)]


@pytest.mark.slow
@pytest.mark.parametrize("cls,version,tv_name", [
    (EfficientNetV1, "efficientnet-b0", "efficientnet_b0"),  # BatchNorm eps 1e-5, as ours
    (EfficientNetV2, "efficientnet_v2_s", "efficientnet_v2_s"),  # BatchNorm eps 1e-3
])
def test_same_features_as_torchvision_with_its_weights(cls, version, tv_name, tmp_path):
    """torchvision V2 (and B5-B7) use BatchNorm eps 1e-3 against our 1e-5. The conversion adds the
    difference to running_var, so var + eps, and the eval output, are the source's. What remains is float32
    rounding of var + 0.00099 (relative 1e-7 per BatchNorm), well inside PARITY_REL; a model built with the
    source's eps (bn_eps=1e-3) reproduces torchvision too. Without the correction the same bound fails."""
    torch.manual_seed(0)
    ref = randomize_and_calibrate_(torchvision.models.get_model(tv_name, weights=None))
    path = tmp_path / "torchvision.pth"
    torch.save(ref.state_dict(), path)
    x = torch.randn(2, 3, 64, 96)
    ours = cls(version=version).eval()
    (report,) = load_pretrained(ours, path, verbose=False)
    assert report.architecture == f"torchvision:{tv_name}"
    expected = torchvision_features(ref, x, ours.out_channels)
    with torch.no_grad():
        got = ours(x)
    assert_close_to_scale(got, expected, PARITY_REL, f"{version} features vs torchvision", min_scale=0.1)

    same_eps = cls(version=version, bn_eps=ref.features[0][1].eps).eval()
    load_pretrained(same_eps, path, verbose=False)
    with torch.no_grad():
        assert_close_to_scale(same_eps(x), expected, PARITY_REL, f"{version} with torchvision's eps")

    if ref.features[0][1].eps != 1e-5:  # the mistake the conversion corrects: the tolerance must catch it
        uncorrected = cls(version=version).eval()
        uncorrected.load_state_dict(same_eps.state_dict())
        with torch.no_grad(), pytest.raises(AssertionError, match="exceeds the bound"):
            assert_close_to_scale(uncorrected(x), expected, PARITY_REL, f"{version} without the eps correction")


TORCHVISION_VERSIONS = [(c, v) for c, v in VERSIONS if spec_of(c, v).torchvision_name]


@pytest.mark.parametrize("cls,version", TORCHVISION_VERSIONS, ids=[v for _, v in TORCHVISION_VERSIONS])
def test_every_torchvision_model_maps_key_for_key(cls, version):
    """Every torchvision EfficientNet maps onto ours exactly (all keys, same shapes), on the meta device."""
    spec = spec_of(cls, version)
    with torch.device("meta"):
        ref = torchvision.models.get_model(spec.torchvision_name, weights=None)
        ours = cls(version=version)
    assert ref.features[0][1].eps == spec.torchvision_bn_eps
    converted = ours.convert_state_dict(ref.state_dict(), "torchvision")
    expected = ours.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_full_timm_model_converts_and_head_is_dropped():
    full = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    assert any(k.startswith(("conv_head", "classifier")) for k in full.state_dict())
    ours = EfficientNetV1()
    result = ours.load_state_dict(ours.convert_state_dict(full.state_dict(), "timm"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_state_dict_of_another_version_is_rejected():
    with torch.device("meta"):
        b1 = timm_features(EfficientNetV1, "efficientnet-b1").state_dict()
        b0 = EfficientNetV1()
    with pytest.raises(ValueError, match="efficientnet_b0"):
        b0.convert_state_dict(b1, "timm")
    with pytest.raises(ValueError, match="no published ImageNet weights"):
        load_pretrained(EfficientNetV1(width=0.5), "timm", verbose=False)


# ---------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------
def test_both_spellings_of_versions_are_accepted():
    assert EfficientNetV1(version="efficientnet_b0", width=0.25).version == "efficientnet-b0"
    assert EfficientNetV1(version="EfficientNet-B0", width=0.25).version == "efficientnet-b0"
    assert EfficientNetV2(version="efficientnet-v2-s", width=0.25).version == "efficientnet_v2_s"


@pytest.mark.parametrize("cls,version", [(EfficientNetV1, "efficientnet-b9"), (EfficientNetV1, "efficientnet_v2_s"),
                                         (EfficientNetV2, "efficientnet-b0"), (EfficientNetV2, None)])
def test_unknown_version_names_value_and_choices(cls, version):
    first, last = list(cls.versions)[0], list(cls.versions)[-1]
    with pytest.raises(ValueError, match=rf"{cls.__name__} version {version!r}.*valid: {first}.*{last}"):
        cls(version=version)


@pytest.mark.parametrize("what", ["width", "depth"])
@pytest.mark.parametrize("value", [0, -1.0, "1.0", None, math.nan, False])
def test_bad_width_or_depth_names_value_and_choices(what, value):
    for cls in (EfficientNetV1, EfficientNetV2):
        with pytest.raises(ValueError, match=rf"{cls.__name__} {what}.*{repr(value).replace('.', '[.]')}.*valid"):
            cls(**{what: value})


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_bad_drop_path_rate(rate):
    with pytest.raises(ValueError, match=rf"drop_path_rate.*{rate}.*valid"):
        EfficientNetV1(width=0.25, drop_path_rate=rate)


def test_registered_under_the_tutorial_names():
    for name, cls in (("efficient", EfficientNetV1), ("efficientnet_v2", EfficientNetV2)):
        reg = lookup(name)
        assert reg is not None and reg.cls is cls and isinstance(reg.rule, MultiOutputBackbone)


# ---------------------------------------------------------------------------------------------------------
# Drop path and fusing
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [MBConv(16, 16, 3, 1, 4.0, 0.25, drop_path=0.5),
                                   FusedMBConv(16, 16, 3, 1, 4.0, drop_path=0.5)], ids=["mbconv", "fused"])
def test_drop_path_drops_whole_residual_branches_in_training_only(block):
    torch.manual_seed(0)
    x = torch.randn(32, 16, 8, 8)
    block.train()
    with torch.no_grad():
        y = block(x)
    kept_input = [torch.equal(y[i], x[i]) for i in range(len(x))]
    assert any(kept_input) and not all(kept_input)  # some samples skipped the branch, some did not
    block.eval()
    with torch.no_grad():
        a, b = block(x), block(x)
    assert torch.equal(a, b) and not any(torch.equal(a[i], x[i]) for i in range(len(x)))


def test_drop_path_rate_grows_with_depth_and_is_identity_in_eval():
    model = EfficientNetV1(width=0.25, depth=0.5, drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob for stage in model.stages for b in stage]
    assert rates[0] == 0.0 and rates == sorted(rates) and rates[-1] < 0.2
    plain = EfficientNetV1(width=0.25, depth=0.5)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    model.eval(), plain.eval()
    with torch.no_grad():
        for a, b in zip(model(x), plain(x)):
            assert torch.equal(a, b)


def fused_and_unfused(cls, version: str, mistake: str | None = None):
    """Features of a random width/depth-0.5 model before and after fuse_modules(); ``mistake`` breaks the fused
    copy the way a faulty fuse would (see helpers.make_mistake_)."""
    torch.manual_seed(0)
    model = randomize_and_calibrate_(cls(version=version, width=0.5, depth=0.5))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        if mistake:
            make_mistake_(model, mistake)
        assert fuse_modules(model) > 0
        after = model(x)
    return model, before, after


@pytest.mark.parametrize("cls,version", [(EfficientNetV1, "efficientnet-b0"), (EfficientNetV2, "efficientnet_v2_s")])
def test_fuse_removes_batchnorm_and_keeps_outputs(cls, version):
    model, before, after = fused_and_unfused(cls, version)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert_close_to_scale(after, before, FUSE_REL, f"{version} fused features", min_scale=0.1)


@pytest.mark.parametrize("mistake", ["bn_dropped", "bn_eps"])
def test_fuse_tolerance_catches_real_mistakes(mistake):
    _, before, after = fused_and_unfused(EfficientNetV1, "efficientnet-b0", mistake)
    with pytest.raises(AssertionError, match="exceeds the bound"):
        assert_close_to_scale(after, before, FUSE_REL, f"efficientnet-b0 fused with {mistake}")


# ---------------------------------------------------------------------------------------------------------
# Through Ultralytics: the shipped YAMLs
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("yaml_name,cls,args", [
    ("yolo11n-EfficientNetV1.yaml", EfficientNetV1, ("efficientnet-b0", 0.25, 0.5)),
    ("yolo11n-EfficientNetV2.yaml", EfficientNetV2, ("efficientnet_v2_s", 0.25, 0.5)),
])
def test_shipped_yaml_builds_trains_and_fuses(yaml_name, cls, args):
    from ultralytics import YOLO

    model = YOLO(yaml_name).model
    backbone = model.model[0]
    assert isinstance(backbone, cls) and (backbone.version, backbone.width, backbone.depth) == args
    assert model.stride.tolist() == [8, 16, 32]
    assert [type(model.model[i]).__name__ for i in (5, 6)] == ["SPPF", "C2PSA"]
    assert model.model[-1].f == [12, 15, 18]
    train_one_step(model, imgsz=64, nc=80)

    randomize_and_calibrate_(model)  # BatchNorm statistics far from their defaults: folding changes the weights
    xs = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    expected = Float32Reference(model, xs)
    fuse_modules(model)
    with torch.no_grad():
        got = [model(x)[0] for x in xs]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    print(assert_matches_float32_reference(got, expected, "fused"))


@pytest.mark.slow
def test_pretrained_file_named_in_yaml_is_loaded(tmp_path):
    from copy import deepcopy

    from helpers import load_requested_weights
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    ref = torchvision.models.get_model("efficientnet_b0", weights=None)
    with torch.no_grad():
        ref.features[0][0].weight.fill_(0.125)
    path = tmp_path / "b0.pth"
    torch.save(ref.state_dict(), path)

    def build(args):
        cfg = deepcopy(yaml_model_load("yolo11n-EfficientNetV1.yaml"))
        cfg["backbone"][0] = [-1, 1, "efficient", args]
        return load_requested_weights(DetectionModel(cfg, verbose=False))

    model = build(["efficientnet_b0", 1.0, 1.0, str(path)])
    assert torch.equal(model.model[0].stem.conv.weight, ref.features[0][0].weight)
    with pytest.raises(ValueError, match="no published ImageNet weights"):
        build(["efficientnet-b0", 0.25, 0.5, str(path)])
