"""TimmBackbone: any timm model with stride 4/8/16/32 features as a YOLO backbone (no network)."""

from __future__ import annotations

import io
import sys
import textwrap
from copy import deepcopy

import numpy as np
import pytest
import torch
from helpers import fresh_python, randomize_and_calibrate_, train_one_step
from torch import nn

import ultralytics_addmodules
from ultralytics_addmodules.nn.timm_backbone import TimmBackbone, fold_conv_batchnorm
from ultralytics_addmodules.registry import lookup

timm = pytest.importorskip("timm")

# The smallest variant of each kind of network: (timm name, what it stands for).
ARCHITECTURES = {
    "convnext_atto": "modern CNN, LayerNorm, stride-4 stem (the YAML's default)",
    "resnet18": "classic residual CNN",
    "regnetx_002": "RegNet CNN",
    "mobilenetv3_small_050": "MobileNetV3 (timm's own features class, SE, hard-swish)",
    "ghostnet_050": "GhostNet",
    "lcnet_050": "PP-LCNet",
    "repvit_m0_9": "RepViT, re-parameterisable",
    "mobileone_s0": "MobileOne, re-parameterisable branches",
    "fastvit_t8": "FastViT hybrid, re-parameterisable",
    "efficientvit_b0": "EfficientViT (MIT) hybrid, linear attention",
    "edgenext_xx_small": "EdgeNeXt hybrid (transposed attention)",
    "pvt_v2_b0": "PVTv2 transformer with stride-4 features",
    "mobilevitv2_050": "MobileViTv2 hybrid",
}
REPARAMETERISABLE = {"repvit_m0_9", "mobileone_s0", "fastvit_t8"}
EXTRA = "pip install ultralytics-addmodules[timm]"


def yolo11_with(name, pretrained=False, nc: int = 2):
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = deepcopy(yaml_model_load("yolo11n-timm.yaml"))
    cfg["nc"] = nc
    cfg["backbone"][0] = [-1, 1, "TimmBackbone", [name, pretrained]]
    return DetectionModel(cfg, verbose=False)


def timm_channels_at_strides(name: str) -> list[int]:
    with torch.device("meta"):
        info = timm.create_model(name).feature_info
    return [[d["num_chs"] for d in info if d["reduction"] == s][-1] for s in (4, 8, 16, 32)]


def onnx_outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    buffer = io.BytesIO()
    torch.onnx.export(model, x, buffer, opset_version=17, dynamo=False, input_names=["images"],
                      output_names=["output0"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_builds_trains_fuses_and_exports_in_yolo11(name):
    model = yolo11_with(name)
    backbone = model.model[0]
    assert isinstance(backbone, TimmBackbone)
    assert model.stride.tolist() == [8, 16, 32]
    assert backbone.out_channels == timm_channels_at_strides(name)
    assert model.model[5].cv1.conv.in_channels == backbone.out_channels[3]  # SPPF reads P5 (layer 4)
    with torch.no_grad():
        features = backbone.eval()(torch.rand(1, 3, 64, 128))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 64 // s, 128 // s) for c, s in zip(backbone.out_channels, (4, 8, 16, 32))]

    train_one_step(model, imgsz=64, nc=2)

    model.eval()
    x = torch.rand(1, 3, 64, 64)
    convs_before = sum(type(m) is nn.Conv2d for m in backbone.modules())
    with torch.no_grad():
        before = model(x)[0]
        model.fuse(verbose=False)
        fused = model(x)[0]
    torch.testing.assert_close(fused, before, rtol=1e-3, atol=1e-3)
    assert backbone.fused
    bn_left = sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert bn_left == 0, f"{bn_left} BatchNorm layers left after fuse"
    if name in REPARAMETERISABLE:  # parallel training-time branches merged into single convs
        assert sum(type(m) is nn.Conv2d for m in backbone.modules()) < convs_before
        assert all(m.reparam_conv is not None for m in backbone.modules() if hasattr(m, "reparam_conv"))

    exported = onnx_outputs(model, x)
    assert np.abs(exported - fused.numpy()).max() < 1e-3


def test_mobileone_fuse_merges_branches():
    backbone = randomize_and_calibrate_(TimmBackbone(3, "mobileone_s0"))  # O(1) features, not O(1000)
    blocks = [m for m in backbone.modules() if hasattr(m, "reparam_conv")]
    assert blocks and all(m.reparam_conv is None for m in blocks)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = backbone(x)
        backbone.fuse()
        after = backbone(x)
    assert all(m.reparam_conv is not None for m in blocks if m in list(backbone.modules()))
    assert sum(p.numel() for p in backbone.parameters()) < 5.29e6 * 0.5  # branches collapsed
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    backbone.fuse()  # a second call is a no-op


def timm_weights_file(name, tmp_path):
    torch.manual_seed(0)
    reference = randomize_and_calibrate_(timm.create_model(name))  # random affine params and BN statistics
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)  # the classification model's keys, head included
    return path


@pytest.mark.parametrize("name", ["convnext_atto", "mobilenetv3_small_050", "fastvit_t8", "efficientvit_b0"])
def test_timm_state_dict_reproduces_timms_own_features(name, tmp_path):
    path = timm_weights_file(name, tmp_path)
    ours = TimmBackbone(3, name)
    ultralytics_addmodules.load_pretrained(ours, path, verbose=False)
    ours.eval()
    # timm's own loader for local files is the oracle: it loads into the full model, then wraps it.
    reference = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                  features_only=True, out_indices=ours.features.feature_info.out_indices).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), reference(x)):
            assert a.abs().max() > 0.1  # features are not trivially zero
            assert (a - b).abs().max() < 1e-4


def test_weights_load_from_yaml_and_with_load_pretrained(tmp_path):
    path = timm_weights_file("convnext_atto", tmp_path)
    expected = torch.load(path)["stem.0.weight"]
    model = yolo11_with("convnext_atto", str(path))
    assert torch.equal(model.model[0].features.stem_0.weight, expected)

    fresh = yolo11_with("convnext_atto")
    assert not torch.equal(fresh.model[0].features.stem_0.weight, expected)
    reports = ultralytics_addmodules.load_pretrained(fresh, path, verbose=False)
    assert reports[0].architecture == "timm:convnext_atto" and reports[0].tensors > 100
    assert torch.equal(fresh.model[0].features.stem_0.weight, expected)


def test_weights_of_another_model_are_rejected_and_nothing_loads(tmp_path):
    path = tmp_path / "femto.pth"
    torch.save(timm.create_model("convnext_femto").state_dict(), path)  # wider than atto
    backbone = TimmBackbone(3, "convnext_atto")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?s)do not fit TimmBackbone.*shape of features\.stem_0\.weight"):
        ultralytics_addmodules.load_pretrained(backbone, path, verbose=False)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())

    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match=r"missing features\.stem_0\.weight"):
        yolo11_with("convnext_atto", str(path))


def test_convert_state_dict_drops_head_and_accepts_saved_backbones():
    backbone = TimmBackbone(3, "resnet18")
    full = timm.create_model("resnet18").state_dict()
    converted = backbone.convert_state_dict(full, "timm")
    assert set(converted) == set(backbone.state_dict())  # fc.* dropped, everything else found
    assert set(backbone.convert_state_dict(backbone.state_dict(), "timm")) == set(backbone.state_dict())
    with pytest.raises(ValueError, match="valid: timm"):
        backbone.convert_state_dict(full, "torchvision")


@pytest.mark.parametrize("pretrained", [True, "timm"])
def test_pretrained_timm_is_recorded_not_downloaded_by_the_constructor(monkeypatch, pretrained):
    calls = []
    real = timm.create_model

    def recording(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        return real(name, pretrained=False, **kwargs)  # never touch the network in tests

    monkeypatch.setattr(timm, "create_model", recording)
    backbone = TimmBackbone(3, "resnet18", pretrained)
    # weights.py loads it once the model is built (offline-first: tests/test_weights.py)
    assert calls and not any(calls) and backbone.requested_weights == pretrained
    assert backbone.weight_sources() == {"timm": "resnet18"}


def test_unknown_name_lists_close_timm_names():
    with pytest.raises(ValueError, match=r"unknown timm model name 'convnext_ato'.*convnext_atto"):
        TimmBackbone(3, "convnext_ato")
    with pytest.raises(ValueError, match=r"unknown timm model name 'resnet_18'.*resnet18"):
        yolo11_with("resnet_18")
    assert TimmBackbone(3, "resnet18.a1_in1k").model_name == "resnet18.a1_in1k"  # pretrained tags are fine


@pytest.mark.parametrize("name, strides", [("vit_tiny_patch16_224", r"\[16\]"),
                                           ("efficientvit_m0", r"\[16, 32, 64\]")])
def test_models_without_the_four_strides_name_what_they_have(name, strides):
    expected = rf"{name}' has feature maps at strides {strides}.*needs strides \[4, 8, 16, 32\]"
    with pytest.raises(ValueError, match=expected):
        TimmBackbone(3, name)


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` sees when it is not installed
    with pytest.raises(ImportError, match=EXTRA.replace("[", r"\[").replace("]", r"\]")):
        TimmBackbone(3, "resnet18")


def test_package_works_without_timm():
    code = textwrap.dedent("""
        import sys
        sys.modules['timm'] = None  # as if timm were not installed
        import ultralytics_addmodules
        from ultralytics import YOLO
        print('BUILT', type(YOLO('yolo11n-MobileNetV4.yaml').model.model[0]).__name__)
        print('REGISTERED', 'TimmBackbone' in ultralytics_addmodules.backbones())
        try:
            YOLO('yolo11n-timm.yaml')
        except ImportError as e:
            print('ERROR', e)
    """)
    r = fresh_python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BUILT MobileNetV4ConvSmall" in r.stdout and "REGISTERED True" in r.stdout
    assert EXTRA in r.stdout


def test_registered_with_the_backbone_rule():
    registration = lookup("TimmBackbone")
    assert registration.cls is TimmBackbone and registration.rule.multi_output


@pytest.mark.slow
def test_checkpoint_reloads_in_a_fresh_process(tmp_path):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import attempt_load_one_weight

    model = YOLO("yolo11n-timm.yaml").model
    path = tmp_path / "timm.pt"
    torch.save({"model": deepcopy(model).half(), "train_args": {}}, path)  # as the trainer saves last.pt
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import torch
        from ultralytics import YOLO
        model = YOLO({str(path)!r}).model.eval()
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / 'x.pt')!r}))[0], {str(tmp_path / 'y.pt')!r})
        print('LOADED', type(model.model[0]).__name__, model.model[0].model_name)
    """)
    r = fresh_python(code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LOADED TimmBackbone convnext_atto" in r.stdout
    here, _ = attempt_load_one_weight(str(path))
    with torch.no_grad():
        expected = here.eval()(x)[0]
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected)


class _ConvReluBn(nn.Module):
    """conv -> in-place ReLU -> BN: the BN sees the conv's tensor object, but not the conv's values."""

    def __init__(self):
        super().__init__()
        self.conv, self.act, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv2(self.bn(self.act(self.conv(x))))
        return [self.bn2(y) + y]  # conv2's output also feeds the residual: folding bn2 would be wrong


def test_bn_folding_only_where_the_bn_reads_the_conv_output():
    model = randomize_and_calibrate_(_ConvReluBn())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)[0]
    assert fold_conv_batchnorm(model, x) == 0  # bn follows a ReLU; bn2's conv output is used twice -> undone
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.bn2, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], before)

    plain = randomize_and_calibrate_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    with torch.no_grad():
        before = plain(x)
        assert fold_conv_batchnorm(plain, x) == 1
        assert isinstance(plain[1], nn.Identity)
        torch.testing.assert_close(plain(x), before, rtol=1e-4, atol=1e-5)


def test_channels_last_families_are_returned_channels_first():
    backbone = TimmBackbone(3, "mambaout_femto").eval()  # MambaOut's blocks work in NHWC
    assert backbone.channels_last_features
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        features = backbone(x)
        raw = backbone.features(x)
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 64 // s, 128 // s) for c, s in zip(backbone.out_channels, (4, 8, 16, 32))]
    assert all(torch.equal(f, r.permute(0, 3, 1, 2)) for f, r in zip(features, raw))
