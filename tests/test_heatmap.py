"""``python -m ultralytics_addmodules heatmap``: LayerCAM / Grad-CAM overlays whose mass falls where the answer is."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ultralytics_addmodules import __main__ as cli
from ultralytics_addmodules.heatmap import class_activation_maps, compute_heatmaps, default_layers, letterbox

# Five stride-2 convolutions (P3/P4/P5 = layers 2/3/4) and a one-class Detect head: small enough to reason about.
TINY_YAML = {
    "nc": 1,
    "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                 [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
    "head": [[[2, 3, 4], 1, "Detect", ["nc"]]],
}


def bright_only_model():
    """A detector whose output depends only on the bright pixels of the image.

    Every convolution averages its inputs with positive weights, BatchNorm is the identity and SiLU(0) = 0,
    so a zero input stays exactly zero through the backbone; a pre-hook zeroes every pixel that is not
    bright (the letterbox grey and the dark background included). Features, and so the heatmap, can be
    non-zero only around the bright square, and larger there means a higher score.
    """
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(TINY_YAML, ch=3, nc=1, verbose=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:  # the DFL conv is a fixed decoder
                m.weight.abs_().div_(m.weight.sum(dim=(1, 2, 3), keepdim=True))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_(), m.running_var.fill_(1.0), m.weight.fill_(1.0), m.bias.zero_()
                m.eps = 0.0
    model.model[0].register_forward_pre_hook(lambda _m, args: (args[0] * (args[0].mean(1, keepdim=True) > 0.9),))
    return model.eval()


def square_image(x0: int, y0: int, size: int = 48, h: int = 200, w: int = 320) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[y0:y0 + size, x0:x0 + size] = 255
    return image


@pytest.mark.parametrize("method, corner", [("layercam", (256, 8)), ("gradcam", (16, 140))])  # top right, bottom
def test_heatmap_mass_falls_on_the_region_that_drives_the_output(method, corner):  # left; 200 px high: padded
    model = bright_only_model()
    x0, y0 = corner
    image = square_image(x0, y0)
    result = compute_heatmaps(model, image, method=method, imgsz=320)
    assert sorted(result.cams) == [2, 3, 4] == default_layers(model)
    assert result.feature_shapes == {2: (16, 28, 40), 3: (16, 14, 20), 4: (16, 7, 10)}  # 224 x 320 input
    ys, xs = np.mgrid[0:200, 0:320]
    for layer, cam in result.cams.items():
        assert cam.shape == (200, 320) and cam.max() == pytest.approx(1.0)
        mass = cam.sum()
        cx, cy = (cam * xs).sum() / mass, (cam * ys).sum() / mass
        assert x0 <= cx <= x0 + 48 and y0 <= cy <= y0 + 48, (layer, cx, cy)  # the centre of mass is on the square
        stride = 2 ** (layer + 1)
        near = np.zeros_like(cam, dtype=bool)  # the square grown by one cell of this layer's grid
        near[max(0, y0 - stride):y0 + 48 + stride, max(0, x0 - stride):x0 + 48 + stride] = True
        assert cam[near].sum() / mass > 0.95, (layer, cam[near].sum() / mass)
    # no score reaches --conf 0.25 here, so the target is the single best prediction
    assert result.fallback and len(result.detections) == 1


def test_layercam_and_gradcam_formulas():
    a = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]], [[3.0, 0.0], [1.0, 1.0]]]])  # 1 x 2 channels x 2 x 2
    g = torch.tensor([[[[1.0, -1.0], [2.0, 0.5]], [[-2.0, 1.0], [0.0, -1.0]]]])
    (layercam,) = class_activation_maps([a], [g], "layercam")
    np.testing.assert_allclose(layercam, [[1.0, 0.0], [0.0, 2.0]])  # sum_c relu(g) * a, then relu
    (gradcam,) = class_activation_maps([a], [g], "gradcam")
    # channel weights: mean(g) = 0.625 and -0.5; 0.625 * a0 - 0.5 * a1, then relu
    np.testing.assert_allclose(gradcam, [[0.0, 1.25], [0.0, 2.0]])


def test_letterbox_keeps_aspect_and_pads_to_the_stride():
    padded, box = letterbox(np.zeros((200, 320, 3), np.uint8), 320, 32)
    assert padded.shape[:2] == (224, 320) and (box.top, box.left, box.width, box.height) == (12, 0, 320, 200)
    assert (padded[:12] == 114).all() and (padded[12:212] == 0).all()
    padded, box = letterbox(np.zeros((100, 40, 3), np.uint8), 64, 32)  # 26 px wide after resizing, padded to 32
    assert padded.shape[:2] == (64, 32) and box.ratio == 0.64 and (box.width, box.left, box.top) == (26, 3, 0)


def save_checkpoint(name, path):
    from ultralytics import YOLO

    torch.save({"model": YOLO(name).model, "train_args": {}}, path)
    return path


@pytest.mark.parametrize("name, layers", [
    pytest.param("yolo11n.yaml", [16, 19, 22], marks=pytest.mark.slow),
    ("yolo11n-MobileNetV4.yaml", [12, 15, 18]),
    pytest.param("yolo11n-EfficientNetV2.yaml", [12, 15, 18], marks=pytest.mark.slow),
])
def test_cli_writes_one_overlay_per_image_and_layer_from_a_checkpoint(tmp_path, capsys, name, layers):
    ckpt = save_checkpoint(name, tmp_path / "model.pt")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), square_image(10, 10, 20, h=48, w=80))
    cv2.imwrite(str(images / "b.png"), square_image(40, 20, 16, h=64, w=64))
    (images / "notes.txt").write_text("not an image")
    (images / "broken.jpg").write_bytes(b"not a jpeg")  # one unreadable image is a row, not a crash
    code = cli.main(["heatmap", str(ckpt), str(images), "--imgsz", "64", "--project", str(tmp_path / "runs")])
    assert code == 0
    run_dir = tmp_path / "runs" / "1"
    expected = {f"{stem}-layer{i}.jpg" for stem in ("a", "b") for i in layers}
    assert {p.name for p in run_dir.iterdir()} == expected
    assert cv2.imread(str(run_dir / f"a-layer{layers[0]}.jpg")).shape == (48, 80, 3)  # the original image size
    assert cv2.imread(str(run_dir / f"b-layer{layers[0]}.jpg")).shape == (64, 64, 3)
    out = capsys.readouterr().out
    assert "| a.jpg | " + str(layers[0]) + " |" in out and str(run_dir) in out
    assert "cannot read image" in out and "broken.jpg" in out and "layercam/score" in out


def test_gradcam_box_target_on_a_backbone_yaml(tmp_path, capsys):
    tiny = write_tiny_backbone_yaml(tmp_path)
    cv2.imwrite(str(tmp_path / "good.jpg"), square_image(5, 5, 10, h=32, w=48))
    code = cli.main(["heatmap", str(tiny), str(tmp_path / "good.jpg"), "--imgsz", "64", "--layers", "2,4",
                     "--method", "gradcam", "--target", "all", "--project", str(tmp_path / "runs")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "1").iterdir()) == ["good-layer2.jpg", "good-layer4.jpg"]
    assert "gradcam/all" in capsys.readouterr().out


def write_tiny_backbone_yaml(folder):
    """Our multi-output backbone (layers 0-4) with a Detect head straight on P3/P4/P5: quick to build."""
    path = folder / "tiny-mnv4.yaml"
    path.write_text("nc: 2\nbackbone:\n  - [-1, 1, MobileNetV4ConvSmall, [0.25]]\n"
                    "head:\n  - [[2, 3, 4], 1, Detect, [nc]]\n")
    return path


@pytest.mark.slow
def test_other_tasks_classify_and_segment():
    from ultralytics import YOLO

    image = square_image(8, 8, 16, h=64, w=64)
    cls_model = YOLO("yolo11n-cls.yaml").model
    result = compute_heatmaps(cls_model, image, imgsz=64)
    assert list(result.cams) == [len(cls_model.model) - 2] and result.cams[9].shape == (64, 64)
    (top,) = result.detections
    assert top.box == () and 0 <= top.cls < 1000 and not result.fallback
    seg_model = YOLO("yolo11n-seg.yaml").model
    result = compute_heatmaps(seg_model, image, imgsz=64, method="gradcam", target="box")
    assert sorted(result.cams) == [16, 19, 22] and all(c.shape == (64, 64) for c in result.cams.values())


BAD_BEFORE_LOADING = [
    (["yolo11n.yaml", "{missing}"], "not found"),
    (["yolo11n.yaml", "{empty}"], "holds no images"),
    (["yolo11n.yaml", "{text}"], "is not an image"),
    (["yolo11n.yaml", "{image}", "--method", "cam"], "--method"),
    (["yolo11n.yaml", "{image}", "--target", "mask"], "--target"),
    (["yolo11n.yaml", "{image}", "--conf", "2"], "--conf"),
    (["yolo11n.yaml", "{image}", "--layers", "p3"], "--layers"),
    (["model.onnx", "{image}"], "model.onnx"),
    (["missing.pt", "{image}"], "missing.pt"),
]
BAD_AFTER_LOADING = [
    (["{tiny}", "{image}", "--layers", "5"], "layer 5 is out of range"),
    (["{tiny}", "{image}", "--layers", "0"], "layer 0 outputs a list"),
]


@pytest.mark.parametrize("argv, needle", BAD_BEFORE_LOADING + BAD_AFTER_LOADING)
def test_bad_input_gives_one_bilingual_line_and_no_run_folder(tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text.txt").write_text("x")
    cv2.imwrite(str(tmp_path / "image.jpg"), square_image(4, 4, 8, h=32, w=32))
    paths = {"missing": tmp_path / "nothing", "empty": tmp_path / "empty", "text": tmp_path / "text.txt",
             "image": tmp_path / "image.jpg", "tiny": write_tiny_backbone_yaml(tmp_path)}
    argv = [a.format(**paths) for a in argv]
    code = cli.main(["heatmap", *argv, "--imgsz", "64", "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("heatmap: 错误：") and " | error: " in err and needle in err.split(" | ")[1]
    assert not (tmp_path / "runs").exists()
