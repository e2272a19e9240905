"""A COCO detector's neck and head into a swapped-backbone model (issue 23): load_pretrained(model, "yolo11n.pt")
aligns the checkpoint's layers with ours by role, copies every same-shape tensor, reports the rest, and what it
copied is still there when training starts."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from helpers import make_tiny_dataset, read_ultralytics_checkpoint, save_like_ultralytics
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from ultralytics_addmodules import load_pretrained
from ultralytics_addmodules.nn.mobilenetv4 import MobileNetV4ConvSmall
from ultralytics_addmodules.transfer import TransferReport
from ultralytics_addmodules.weights import WeightsError

SWAPPED = ["MobileNetV4", "MobileNetV1", "EfficientNetV1", "EfficientNetV2"]
# yolo11's backbone takes layers 0-10 with its P3/P4/P5 at 4/6/8; ours takes 0-4 (P2-P5 selectors at 1-4),
# and every later line of the YAMLs is yolo11's, so our layer i plays the role of stock layer i + 4.
OFFSET, FIRST_NECK_LAYER = 4, 5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return {"detect": save_like_ultralytics("yolo11n.yaml", folder / "yolo11n.pt"),
            "segment": save_like_ultralytics("yolo11n-seg.yaml", folder / "yolo11n-seg.pt", seed=1)}


@pytest.fixture(scope="module")
def stock_models(checkpoints):
    """The checkpoints as Ultralytics itself reads them (the oracle)."""
    return {task: read_ultralytics_checkpoint(path) for task, path in checkpoints.items()}


def _same_shape_pairs(model, stock, layers, offset):
    """(our key, our tensor, stock tensor) for every tensor of ``layers`` whose stock counterpart has its shape."""
    pairs, total = [], 0
    for i in layers:
        theirs = stock.model[i + offset].state_dict()
        for key, tensor in model.model[i].state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            total += 1
            if key in theirs and theirs[key].shape == tensor.shape:
                pairs.append((f"model.{i}.{key}", tensor, theirs[key]))
    return pairs, total


@pytest.mark.parametrize("family", [pytest.param(f, marks=[] if f == "MobileNetV4" else pytest.mark.slow)
                                    for f in SWAPPED])
def test_neck_and_head_transfer_by_role(family, checkpoints, stock_models):
    yolo = YOLO(f"yolo11n-{family}.yaml")
    backbone_before = {k: v.clone() for k, v in yolo.model.model[0].state_dict().items()}
    (report,) = load_pretrained(yolo, checkpoints["detect"])
    pairs, total = _same_shape_pairs(yolo.model, stock_models["detect"], range(FIRST_NECK_LAYER, len(yolo.model.model)),
                                     OFFSET)
    assert isinstance(report, TransferReport) and report.by == "structure"
    different = [key for key, ours, theirs in pairs if not torch.equal(ours, theirs)]
    assert not different, different[:5]
    assert report.tensors == len(pairs) >= 0.9 * total and report.candidates == total
    assert report.layers == {i: i + OFFSET for i in range(FIRST_NECK_LAYER, len(yolo.model.model))}
    assert all(torch.equal(backbone_before[k], v) for k, v in yolo.model.model[0].state_dict().items())
    line = str(report)
    assert "\n" not in line and f"{report.tensors}/{total} tensors" in line and "by structure" in line


@pytest.mark.slow
def test_stock_transfer_by_index_would_copy_nothing_useful(checkpoints):
    # the problem being solved: Ultralytics' own transfer matches keys (layer indices) and shapes
    yolo = YOLO("yolo11n-MobileNetV4.yaml")
    before = {k: v.clone() for k, v in yolo.model.state_dict().items()}
    yolo.load(str(checkpoints["detect"]))
    changed = [k for k, v in yolo.model.state_dict().items() if not torch.equal(before[k], v)]
    assert len(changed) <= 10  # vs 255 tensors by role (test above)


def test_stock_layout_model_transfers_by_index(checkpoints, stock_models):
    yolo = YOLO("yolo11n-C3_UIB.yaml")
    (report,) = load_pretrained(yolo, checkpoints["detect"], verbose=False)
    stock = stock_models["detect"]
    same_type = [i for i, layer in enumerate(yolo.model.model) if type(layer) is type(stock.model[i])]
    other_type = [i for i in range(len(stock.model)) if i not in same_type]
    pairs, _ = _same_shape_pairs(yolo.model, stock, same_type, 0)
    assert report.by == "index" and report.tensors == len(pairs) > 100
    assert all(torch.equal(ours, theirs) for _, ours, theirs in pairs)
    listed = f"layers {', '.join(map(str, other_type))} (C3_UIB here, C3k2 in the checkpoint)"
    assert other_type and listed in str(report)


def test_segment_checkpoint_into_a_detect_model(checkpoints, stock_models):
    yolo = YOLO("yolo11n-MobileNetV4.yaml")
    (report,) = load_pretrained(yolo, checkpoints["segment"], verbose=False)
    pairs, _ = _same_shape_pairs(yolo.model, stock_models["segment"], range(FIRST_NECK_LAYER, len(yolo.model.model)),
                                 OFFSET)
    assert all(torch.equal(ours, theirs) for _, ours, theirs in pairs) and report.tensors == len(pairs) > 200
    assert report.task == "segment" and report.task_specific == ["cv4", "proto"]
    assert "segment head parts not in this model: cv4, proto" in str(report)


def test_other_class_count_skips_the_class_branch_and_says_so(checkpoints, stock_models):
    model = DetectionModel("yolo11n-MobileNetV4.yaml", nc=3, verbose=False)
    (report,) = load_pretrained(model, checkpoints["detect"], verbose=False)
    head = len(model.model) - 1
    assert report.class_dependent and all(k.startswith(f"model.{head}.cv3.") for k in report.class_dependent)
    stock_head = stock_models["detect"].model[head + OFFSET]
    for key, tensor in model.model[head].state_dict().items():
        if key.startswith("cv2."):  # box regression does not depend on the classes
            assert torch.equal(tensor, stock_head.state_dict()[key])
    assert "80 classes in the checkpoint, 3 here" in str(report)


def test_a_checkpoint_needs_a_whole_model(checkpoints):
    with pytest.raises(WeightsError, match="loads into a whole YOLO model") as e:
        load_pretrained(MobileNetV4ConvSmall(3, 1.0), checkpoints["detect"], verbose=False)
    assert "\n" not in str(e.value)


class Foreign(nn.Module):
    """A class outside the allowlist, pickled inside an otherwise normal checkpoint."""


def test_checkpoint_with_classes_outside_the_allowlist_is_refused(stock_models, tmp_path):
    model = deepcopy(stock_models["detect"])
    model.extra = Foreign()
    torch.save({"model": model.half(), "train_args": {}}, tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match=r"outside the safe-loading allowlist \(test_transfer\.Foreign\)") as e:
        load_pretrained(MobileNetV4ConvSmall(3, 1.0), tmp_path / "odd.pt", verbose=False)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_imagenet_backbone_and_coco_neck_head_are_where_training_starts(checkpoints, stock_models, tmp_path):
    timm = pytest.importorskip("timm")
    sd_file = tmp_path / "mnv4.pth"
    torch.save(timm.create_model("mobilenetv4_conv_small").state_dict(), sd_file)
    yolo = YOLO("yolo11n-MobileNetV4-pretrained.yaml")
    load_pretrained(yolo, [sd_file, checkpoints["detect"]])  # 80 classes; the dataset below has 2
    seen = {}

    def capture(trainer):
        seen["model"], seen["ema"] = trainer.model, trainer.ema.ema
        raise _Stop

    yolo.add_callback("on_train_start", capture)
    data = make_tiny_dataset(tmp_path / "data", n_train=4, n_val=2)
    with pytest.raises(_Stop):
        yolo.train(data=str(data), epochs=1, imgsz=64, batch=2, device="cpu", workers=0, project=str(tmp_path),
                   name="run", plots=False)
    backbone = MobileNetV4ConvSmall(3, 1.0).convert_state_dict(torch.load(sd_file), "timm")
    for model in (seen["model"], seen["ema"]):
        assert model.model[-1].nc == 2
        state = model.model[0].state_dict()
        assert all(torch.equal(state[k], v) for k, v in backbone.items())
        neck_and_head = range(FIRST_NECK_LAYER, len(model.model))
        pairs, total = _same_shape_pairs(model, stock_models["detect"], neck_and_head, OFFSET)
        assert len(pairs) > 0.7 * total and all(torch.equal(ours, theirs) for _, ours, theirs in pairs)
