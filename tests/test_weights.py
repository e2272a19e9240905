"""load_pretrained: strict, all-or-nothing loading of reference state dicts, from files and YAML lines."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from helpers import PARITY_REL, assert_close_to_scale, make_tiny_dataset, randomize_and_calibrate_
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from ultralytics_addmodules import load_pretrained
from ultralytics_addmodules.nn.mobilenetv4 import MobileNetV4ConvSmall
from ultralytics_addmodules.training import freeze_backbone

timm = pytest.importorskip("timm")


def _randomized_timm_state_dict(name: str) -> dict:
    """A full timm classification model's state dict with random weights AND random BN statistics."""
    torch.manual_seed(0)
    return randomize_and_calibrate_(timm.create_model(name, pretrained=False)).state_dict()


@pytest.fixture(scope="module")
def small_sd_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "mnv4_small.pth"
    torch.save(_randomized_timm_state_dict("mobilenetv4_conv_small"), path)
    return path


def _yaml_with_backbone_args(args: list) -> dict:
    d = yaml_model_load("yolo11n-MobileNetV4.yaml")
    d = deepcopy(d)
    d["backbone"][0][3] = args
    d["nc"] = 2
    return d


def _reference_features(sd_file, x):
    ref = timm.create_model("mobilenetv4_conv_small", features_only=True, out_indices=(1, 2, 3, 4))
    sd = torch.load(sd_file, weights_only=True)
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not missing
    with torch.no_grad():
        return ref.eval()(x)


@pytest.mark.parametrize("wrap", ["plain", "checkpoint-dict"])
def test_loads_into_yolo_and_reproduces_timm_features(small_sd_file, tmp_path, wrap):
    path = small_sd_file
    if wrap == "checkpoint-dict":
        path = tmp_path / "ckpt.pth"
        torch.save({"epoch": 3, "state_dict": torch.load(small_sd_file, weights_only=True)}, path)
    yolo = YOLO("yolo11n-MobileNetV4.yaml")
    yolo.model = DetectionModel(_yaml_with_backbone_args([1.0]), verbose=False)
    reports = load_pretrained(yolo, path)
    assert len(reports) == 1 and reports[0].architecture == "timm:mobilenetv4_conv_small"
    assert reports[0].tensors == len([k for k in yolo.model.model[0].state_dict() if "num_batches" not in k])
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    ours = yolo.model.model[0].eval()
    with torch.no_grad():
        got = ours(x)
    assert_close_to_scale(got, _reference_features(small_sd_file, x), PARITY_REL, "features vs timm", min_scale=0.1)


def test_yaml_line_carries_the_source(small_sd_file, caplog):
    with caplog.at_level("INFO", logger="ultralytics"):
        model = DetectionModel(_yaml_with_backbone_args([1.0, str(small_sd_file)]), verbose=False)
    assert "loaded pretrained" in caplog.text and str(small_sd_file) in caplog.text
    sd = torch.load(small_sd_file, weights_only=True)
    assert torch.equal(model.model[0].state_dict()[next(iter(model.model[0].state_dict()))].flatten()[:3],
                       next(v for k, v in sd.items() if v.dim() == 4).flatten()[:3])


def test_other_width_has_no_weights(small_sd_file):
    with pytest.raises(ValueError, match=r"no published ImageNet weights.*width 1\.0"):
        load_pretrained(MobileNetV4ConvSmall(3, 0.5), small_sd_file)


def test_wrong_architecture_fails_and_changes_nothing(tmp_path):
    path = tmp_path / "medium.pth"
    torch.save(_randomized_timm_state_dict("mobilenetv4_conv_medium"), path)
    bb = MobileNetV4ConvSmall(3, 1.0)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?s)do not fit MobileNetV4ConvSmall.*Nothing was loaded") as e:
        load_pretrained(bb, path)
    assert any(w in str(e.value) for w in ("shape of", "missing", "blocks"))
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())


def test_corrupt_truncated_and_missing_files(small_sd_file, tmp_path):
    bb = MobileNetV4ConvSmall(3, 1.0)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(small_sd_file.read_bytes()[:5000])
    for bad in (garbage, truncated):
        with pytest.raises(ValueError, match=bad.name):
            load_pretrained(bb, bad)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(bb, tmp_path / "nope.pth")
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_pretrained(bb, not_a_state_dict)


def test_model_without_our_backbone():
    with pytest.raises(ValueError, match="no ultralytics-addmodules backbone"):
        load_pretrained(DetectionModel("yolo11n.yaml", verbose=False), "timm")
    with pytest.raises(TypeError, match="YOLO object"):
        load_pretrained("yolo11n.yaml", "timm")


def test_freeze_backbone_rejects_bad_epochs():
    with pytest.raises(ValueError, match="-1"):
        freeze_backbone(YOLO("yolo11n.yaml"), -1)


@pytest.mark.slow
def test_short_finetune_from_state_dict_with_frozen_backbone(small_sd_file, tmp_path):
    data = make_tiny_dataset(tmp_path / "data")
    yolo = YOLO("yolo11n-MobileNetV4.yaml")
    yolo.model = DetectionModel(_yaml_with_backbone_args([1.0, str(small_sd_file)]), verbose=False)
    loaded = {k: v.clone() for k, v in yolo.model.model[0].state_dict().items() if v.dtype.is_floating_point}
    frozen_seen = []
    freeze_backbone(yolo, 1)
    yolo.add_callback("on_train_epoch_end", lambda t: frozen_seen.append(
        not any(p.requires_grad for p in t.model.model[0].parameters())))
    yolo.train(data=str(data), epochs=2, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False,
               project=str(tmp_path / "runs"), name="ft", exist_ok=True, val=False)
    assert frozen_seen == [True, False]
    assert (tmp_path / "runs" / "ft" / "weights" / "last.pt").is_file()
    trained = yolo.trainer.model.model[0].state_dict()
    conv_keys = [k for k, v in loaded.items() if v.dim() == 4]
    assert any(not torch.equal(loaded[k], trained[k]) for k in conv_keys)  # fine-tuned after the unfreeze
