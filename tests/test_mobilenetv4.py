"""MobileNetV4 backbones: exact timm architecture at width 1.0, feature parity with timm weights, any width,
argument checks, fusing, timm key mapping."""

from __future__ import annotations

import math
import re
from copy import deepcopy

import numpy as np
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
    MobileMQA,
)
from ultralytics_addmodules.nn.common import LayerScale2d
from ultralytics_addmodules.registry import MultiOutputBackbone, lookup
from ultralytics_addmodules.weights import load_pretrained

timm = pytest.importorskip("timm")

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
    train mode, so activations stay O(1) and folding them changes the outputs), then eval mode."""
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
    assert_close_to_scale(got, expected, PARITY_REL, f"{variant} features vs timm", min_scale=0.1)


@pytest.mark.parametrize("variant, mistake", [("conv_small", "bn_eps"), ("hybrid_medium", "layer_scale_dropped")])
def test_parity_tolerance_catches_a_wrong_eps_or_a_dropped_layer_scale(variant, mistake, tmp_path):
    """PARITY_REL is loose enough for float32 noise and still fails on real conversion mistakes: BatchNorm eps
    1e-3 (torchvision's) instead of timm's 1e-5, or the last layer scale of a hybrid model left out."""
    torch.manual_seed(0)
    ref = randomize_(timm_features(variant))
    path = tmp_path / "timm.pt"
    torch.save(ref.state_dict(), path)
    ours = CLASSES[variant]().eval()
    load_pretrained(ours, path, verbose=False)
    make_mistake_(ours, mistake)
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 96)
        expected, got = ref(x), ours(x)
    with pytest.raises(AssertionError, match="exceeds the bound"):
        assert_close_to_scale(got, expected, PARITY_REL, f"{variant} with {mistake} mistake")


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


def fused_and_unfused(variant: str, mistake: str | None = None):
    """Features of a random width-0.5 model before and after fuse_modules(); ``mistake`` (see
    helpers.make_mistake_) breaks the fused copy the way a faulty fuse would."""
    torch.manual_seed(0)
    model = randomize_(CLASSES[variant](width=0.5))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        if mistake:
            make_mistake_(model, mistake)
        assert fuse_modules(model) > 0
        after = model(x)
    return model, before, after


@pytest.mark.parametrize("variant", ["conv_small", "conv_medium", "hybrid_medium", "hybrid_large"])
def test_fuse_removes_batchnorm_and_keeps_outputs(variant):
    model, before, after = fused_and_unfused(variant)
    assert not any(isinstance(m, (nn.BatchNorm2d, LayerScale2d)) for m in model.modules())
    assert_close_to_scale(after, before, FUSE_REL, f"{variant} fused features", min_scale=0.1)


@pytest.mark.parametrize("variant, mistake", [("conv_small", "bn_dropped"), ("conv_small", "bn_eps"),
                                              ("hybrid_medium", "layer_scale_dropped")])
def test_fuse_tolerance_catches_real_mistakes(variant, mistake):
    _, before, after = fused_and_unfused(variant, mistake)
    with pytest.raises(AssertionError, match="exceeds the bound"):
        assert_close_to_scale(after, before, FUSE_REL, f"{variant} fused with {mistake}")


def test_attention_exports_to_onnx_without_broadcast_matmul():
    """Mobile MQA's products are plain batched matmuls with equal batch dims (a broadcast 4-D MatMul
    crashed onnx2tf's INT8 conversion), and the exported graph computes what PyTorch does."""
    import io

    import onnx
    import onnxruntime as ort

    model = MobileNetV4HybridMedium(width=0.25).eval()
    x = torch.randn(1, 3, 64, 96)
    buffer = io.BytesIO()
    torch.onnx.export(model, x, buffer, opset_version=17, dynamo=False, input_names=["images"])
    graph = onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue()), data_prop=True).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    attention_blocks = sum(isinstance(m, MobileMQA) for m in model.modules())
    assert attention_blocks == 8 and len(matmuls) == 2 * attention_blocks
    for node in matmuls:
        a, b = (shapes[name] for name in node.input)
        assert len(a) == len(b) == 3 and a[0] == b[0], (node.name, a, b)

    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x)
    for e, o in zip(expected, session.run(None, {"images": x.numpy()})):
        assert np.abs(e.numpy() - o).max() <= 1e-4 * max(1.0, float(e.abs().max()))


def test_registered_as_multi_output_backbones():
    for cls in CLASSES.values():
        reg = lookup(cls.__name__)
        assert reg is not None and reg.cls is cls
        assert isinstance(reg.rule, MultiOutputBackbone)


# ---------------------------------------------------------------------------------------------------------
# Through Ultralytics: the shipped YAML, every variant in it, training, pretrained weights named in the YAML
# ---------------------------------------------------------------------------------------------------------
def yolo11_with(backbone: str, args: list):
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = deepcopy(yaml_model_load("yolo11n-MobileNetV4.yaml"))
    cfg["backbone"][0] = [-1, 1, backbone, args]
    return DetectionModel(cfg, verbose=False)


@pytest.fixture(scope="module")
def shipped_model():
    """yolo11n-MobileNetV4.yaml as built by Ultralytics (tests change deep copies only)."""
    from ultralytics import YOLO

    return YOLO("yolo11n-MobileNetV4.yaml").model


def fused_detections(model, mistake: str | None = None):
    """Calibrated random BatchNorm statistics (folding must really change the weights), then the Detect output
    of several inputs before (as a float32 reference with its rounding noise) and after fuse_modules()."""
    randomize_and_calibrate_(model)
    xs = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    expected = Float32Reference(model, xs)
    if mistake:
        make_mistake_(model.model[0], mistake)
    fuse_modules(model)
    with torch.no_grad():
        return [model(x)[0] for x in xs], expected


def test_shipped_yaml_builds_trains_and_fuses(shipped_model):
    model = deepcopy(shipped_model)
    backbone = model.model[0]
    assert isinstance(backbone, MobileNetV4ConvSmall) and backbone.width == 0.5
    assert model.stride.tolist() == [8, 16, 32]
    assert type(model.model[5]).__name__ == "SPPF" and type(model.model[6]).__name__ == "C2PSA"
    assert model.model[-1].f == [12, 15, 18]
    train_one_step(model, imgsz=64, nc=80)

    got, expected = fused_detections(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.model[0].modules())
    print(assert_matches_float32_reference(got, expected, "fused"))


@pytest.mark.parametrize("mistake", ["bn_dropped", "bn_eps"])
def test_fused_model_bound_catches_real_mistakes(shipped_model, mistake):
    got, expected = fused_detections(deepcopy(shipped_model), mistake)
    with pytest.raises(AssertionError, match="percentile"):
        assert_matches_float32_reference(got, expected, f"fused with {mistake}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_in_the_yaml(variant):
    model = yolo11_with(CLASSES[variant].__name__, [0.25]).eval()
    assert model.stride.tolist() == [8, 16, 32]
    assert model.model[5].cv1.conv.in_channels == model.model[0].out_channels[3]  # SPPF reads P5
    with torch.no_grad():
        preds = model(torch.rand(1, 3, 64, 96))[0]
    assert preds.shape == (1, 84, (64 * 96) // 64 + (64 * 96) // 256 + (64 * 96) // 1024)


def test_constructor_records_the_weights_source_and_loads_nothing(tmp_path):
    missing = str(tmp_path / "absent.pt")  # loading it would fail: the constructor must not try
    assert MobileNetV4ConvSmall(3, 1.0, missing).requested_weights == missing
    assert MobileNetV4HybridMedium(3, 0.5, True).requested_weights == "timm"
    assert all(MobileNetV4ConvSmall(3, 0.5, none).requested_weights is None for none in (None, False, "none"))


def test_pretrained_file_named_in_yaml_is_loaded(tmp_path):
    from helpers import load_requested_weights

    ref = timm_features("conv_small")
    with torch.no_grad():
        ref.conv_stem.weight.fill_(0.125)
    path = tmp_path / "mnv4s.pt"
    torch.save(ref.state_dict(), path)
    model = load_requested_weights(yolo11_with("MobileNetV4ConvSmall", [1.0, str(path)]))
    assert torch.equal(model.model[0].stem.conv.weight, ref.conv_stem.weight)
    with pytest.raises(ValueError, match="no published ImageNet weights"):
        load_requested_weights(yolo11_with("MobileNetV4ConvSmall", [0.5, str(path)]))
