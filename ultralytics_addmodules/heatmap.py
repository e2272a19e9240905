"""Heatmaps for paper figures: ``python -m ultralytics_addmodules heatmap MODEL SOURCE [--layers ...]``.

For every image in SOURCE (an image or a folder) and every chosen layer, the image with a class-activation
map overlaid and the model's detections drawn, written to runs/heatmap/N/<image>-layer<i>.jpg.

Method (both computed here with forward hooks and autograd, no extra package):
- LayerCAM (Jiang et al., 2021; the default): cam = ReLU(sum over channels of ReLU(dS/dA) * A), i.e. every
  position weighted by its own positive gradient; it stays sharp on the shallow, high-resolution P3 map.
- Grad-CAM (Selvaraju et al., 2017): cam = ReLU(sum over channels of mean(dS/dA) * A), one weight per channel.
A is the layer's output, S the target. Default layers: the feature maps the head reads (the Detect layer's
``from``, i.e. P3/P4/P5; the classifier's input for classification models).

Target S (``--target``), as the detection-CAM literature and the common YOLO heatmap scripts do: ``score``
(default) is the sum of the class scores of the detections kept after confidence threshold and NMS;
``box`` the sum of their box coordinates (normalised by the input size); ``all`` both. With no detection
above ``--conf`` the single highest-scoring prediction is the target, and the table says so. Classification
models use the top class probability. Segment, pose and OBB models use their detection branch (boxes and
class scores); OBB boxes are drawn rotated, and NMS over them uses the upright boxes (a target selection, not
an evaluation).

Each map is normalised to [0, 1] per image and layer, so colours compare positions within one image, not
magnitudes across layers or images.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import fail, markdown_table, new_run_dir

COMMAND = "heatmap"
METHODS = ("layercam", "gradcam")
TARGETS = ("score", "box", "all")
IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
PAD_VALUE = 114  # letterbox grey, as Ultralytics pads


class HeatmapError(ValueError):
    """A request the model or the input cannot satisfy; ``str(error)`` is one bilingual line."""


@dataclass
class Detection:
    """One detection in original-image pixels: corners (or, for OBB, centre, size and angle in radians)."""

    box: tuple[float, ...]
    score: float
    cls: int
    rotated: bool = False


@dataclass
class Letterbox:
    """How an image was resized and padded into the network input."""

    ratio: float
    left: int
    top: int
    width: int  # resized image inside the padding
    height: int


@dataclass
class HeatmapResult:
    """Maps (original-image size, values in [0, 1]) per layer, and what they explain."""

    cams: dict[int, np.ndarray]
    detections: list[Detection]
    fallback: bool  # no detection passed the confidence threshold: the top prediction was the target
    feature_shapes: dict[int, tuple[int, ...]]


# --- model structure ---------------------------------------------------------------------------------------
def head_of(model):
    """The model's last layer (Detect and its subclasses, or Classify)."""
    return model.model[-1]


def task_of(model) -> str:
    """'detect' for Detect and its subclasses (segment, pose, OBB: their detection branch), 'classify', or ''."""
    from ultralytics.nn.modules.head import Classify, Detect

    head = head_of(model)
    if isinstance(head, Detect):
        return "detect"
    if isinstance(head, Classify):
        return "classify"
    return ""


def default_layers(model) -> list[int]:
    """The layers whose outputs the head reads: P3/P4/P5 for detection (the Detect layer's ``from``)."""
    head = head_of(model)
    sources = head.f if isinstance(head.f, (list, tuple)) else [head.f]
    return [s if s >= 0 else head.i + s for s in sources]


def check_model(model) -> None:
    """Raise HeatmapError unless the model's head is one the targets are defined for."""
    if not task_of(model):
        name = type(head_of(model)).__name__
        raise HeatmapError(_bi(f"不支持 {name} 头：热力图支持检测、分割、姿态、旋转框和分类模型",
                               f"{name} heads are not supported: heatmaps work for detect, segment, pose, OBB and "
                               "classify models"))


def check_layers(model, layers: list[int]) -> None:
    """Raise HeatmapError unless every index names a layer before the head that outputs one feature map
    (checked with one small forward pass)."""
    import torch

    last = len(model.model) - 1
    for i in layers:
        if not 0 <= i < last:
            raise HeatmapError(_bi(f"层号 {i} 超出范围：可选 0-{last - 1}（默认 {default_layers(model)} 是检测头读取的特征图）",
                                   f"layer {i} is out of range: choose 0-{last - 1} (the default "
                                   f"{default_layers(model)} are the feature maps the head reads)"))
    kinds = {}
    handles = [model.model[i].register_forward_hook(lambda _m, _a, out, i=i: kinds.setdefault(i, out))
               for i in dict.fromkeys(layers)]
    p = next(model.parameters())
    size = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for i in layers:
        if not isinstance(kinds.get(i), torch.Tensor):
            kind = type(kinds.get(i)).__name__
            raise HeatmapError(_bi(f"第 {i} 层输出的是 {kind}，不是一张特征图；请选别的层（默认 {default_layers(model)}）",
                                   f"layer {i} outputs a {kind}, not one feature map; choose another layer (default "
                                   f"{default_layers(model)})"))


def _bi(zh: str, en: str) -> str:
    from .messages import bilingual

    return bilingual(zh, en)


# --- images ------------------------------------------------------------------------------------------------
def list_images(source: str | Path) -> list[Path]:
    """The image files of SOURCE (one image, or a folder's images sorted by name); HeatmapError otherwise."""
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise HeatmapError(_bi(f"{path} 不是图片（支持 {', '.join(sorted(IMAGE_SUFFIXES))}）",
                                   f"{path} is not an image (supported: {', '.join(sorted(IMAGE_SUFFIXES))})"))
        return [path]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise HeatmapError(_bi(f"文件夹 {path} 中没有图片（支持 {', '.join(sorted(IMAGE_SUFFIXES))}）",
                                   f"folder {path} holds no images (supported: {', '.join(sorted(IMAGE_SUFFIXES))})"))
        return images
    raise HeatmapError(_bi(f"找不到图片或文件夹 {source!r}", f"image or folder not found: {source!r}"))


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 image; HeatmapError when the file cannot be decoded."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise HeatmapError(_bi(f"无法读取图片 {path}（文件损坏或格式不支持）",
                               f"cannot read image {path} (corrupt file or unsupported format)"))
    return image


def letterbox(image: np.ndarray, imgsz: int, stride: int) -> tuple[np.ndarray, Letterbox]:
    """Resize the longer side to ``imgsz`` keeping the aspect ratio, then pad each side to a multiple of
    ``stride`` (centred, grey), as Ultralytics' predictor does for one image."""
    import cv2

    h, w = image.shape[:2]
    ratio = min(imgsz / h, imgsz / w)
    nw, nh = max(1, round(w * ratio)), max(1, round(h * ratio))
    out_w, out_h = math.ceil(nw / stride) * stride, math.ceil(nh / stride) * stride
    left, top = (out_w - nw) // 2, (out_h - nh) // 2
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else image
    padded = cv2.copyMakeBorder(resized, top, out_h - nh - top, left, out_w - nw - left, cv2.BORDER_CONSTANT,
                                value=(PAD_VALUE,) * 3)
    return padded, Letterbox(ratio, left, top, nw, nh)


def to_tensor(image_bgr: np.ndarray):
    """1x3xHxW float tensor in [0, 1], RGB, as Ultralytics feeds its models."""
    import torch

    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1))
    return torch.from_numpy(rgb).float().div_(255).unsqueeze(0)


# --- targets -----------------------------------------------------------------------------------------------
def _xywh_to_xyxy(b):
    import torch

    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)


def select_targets(model, output, conf: float, iou: float, max_det: int, target: str, input_hw: tuple[int, int]):
    """(scalar target S, [(box tensor, score, cls, rotated)], fallback) from the model's eval-mode output."""
    import torch
    from torchvision.ops import batched_nms

    head = head_of(model)
    pred = output[0] if isinstance(output, (list, tuple)) else output
    if task_of(model) == "classify":
        probs = pred[0]
        top = int(probs.argmax())
        return probs[top], [(None, probs[top], top, False)], False
    scale = float(max(input_hw))
    if getattr(head, "end2end", False) and pred.ndim == 3 and pred.shape[-1] == 6:  # NMS-free: [x1 y1 x2 y2 s c]
        rows = pred[0]
        keep = (rows[:, 4] > conf).nonzero().flatten()[:max_det]
        fallback = keep.numel() == 0
        if fallback:
            keep = rows[:, 4].argmax().reshape(1)
        chosen = [(rows[k, :4], rows[k, 4], int(rows[k, 5]), False) for k in keep.tolist()]
    else:
        nc = head.nc
        boxes, scores = pred[0, :4].T, pred[0, 4:4 + nc].T  # (anchors, 4) xywh, (anchors, nc)
        rotated = type(head).__name__ == "OBB"
        angles = pred[0, -1] if rotated else None
        best, cls = scores.detach().max(1)
        candidates = (best > conf).nonzero().flatten()
        fallback = candidates.numel() == 0
        if fallback:
            candidates = best.argmax().reshape(1)
        xyxy = _xywh_to_xyxy(boxes.detach()[candidates])
        kept = candidates[batched_nms(xyxy, best[candidates], cls[candidates], iou)][:max_det]
        chosen = []
        for k in kept.tolist():
            box = torch.cat([boxes[k], angles[k:k + 1]]) if rotated else _xywh_to_xyxy(boxes[k:k + 1])[0]
            chosen.append((box, scores[k, cls[k]], int(cls[k]), rotated))
    score_sum = sum(s for _, s, _, _ in chosen)
    box_sum = sum(b[:4].sum() for b, _, _, _ in chosen) / scale
    value = {"score": score_sum, "box": box_sum, "all": score_sum + box_sum}[target]
    return value, chosen, fallback


# --- CAMs ---------------------------------------------------------------------------------------------------
def class_activation_maps(activations: list, gradients: list, method: str) -> list[np.ndarray]:
    """One map per layer (feature-map resolution, >= 0): LayerCAM or Grad-CAM of activations A and dS/dA."""
    maps = []
    for a, g in zip(activations, gradients):
        a, g = a[0].detach().float(), g[0].detach().float()  # C x H x W, batch of one
        if method == "layercam":
            cam = (g.clamp(min=0) * a).sum(0)
        else:
            cam = (g.mean(dim=(1, 2), keepdim=True) * a).sum(0)
        maps.append(cam.clamp(min=0).cpu().numpy())
    return maps


def to_image_space(cam: np.ndarray, box: Letterbox, input_hw: tuple[int, int], image_hw: tuple[int, int]
                   ) -> np.ndarray:
    """Upsample a feature-map CAM to the network input, cut away the padding, resize to the original image,
    and normalise to [0, 1] (all zeros stay zeros)."""
    import cv2

    full = cv2.resize(cam.astype(np.float32), (input_hw[1], input_hw[0]), interpolation=cv2.INTER_LINEAR)
    inner = full[box.top:box.top + box.height, box.left:box.left + box.width]
    out = cv2.resize(inner, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR).clip(min=0)
    peak = float(out.max())
    return out / peak if peak > 0 else out


def compute_heatmaps(model, image_bgr: np.ndarray, layers: list[int] | None = None, method: str = "layercam",
                     target: str = "score", imgsz: int = 640, conf: float = 0.25, iou: float = 0.7,
                     max_det: int = 300) -> HeatmapResult:
    """CAMs of ``layers`` (default: the head's inputs) for one BGR image; see the module docstring."""
    import torch

    if method not in METHODS:
        raise HeatmapError(_bi(f"未知方法 {method!r}，可选 {', '.join(METHODS)}",
                               f"unknown method {method!r}; choose one of {', '.join(METHODS)}"))
    if target not in TARGETS:
        raise HeatmapError(_bi(f"未知目标 {target!r}，可选 {', '.join(TARGETS)}",
                               f"unknown target {target!r}; choose one of {', '.join(TARGETS)}"))
    check_model(model)
    layers = list(layers) if layers else default_layers(model)
    if not all(0 <= i < len(model.model) - 1 for i in layers):
        check_layers(model, layers)  # raises the out-of-range line
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    padded, box = letterbox(image_bgr, imgsz, stride)
    p = next(model.parameters())
    x = to_tensor(padded).to(p.device, p.dtype).requires_grad_(True)

    captured: dict[int, object] = {}

    def keep(index):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                check_layers(model, layers)  # raises the line that names the layer
            captured[index] = output
            return output.clone()  # later layers may work in place; the recorded tensor must stay as it was
        return hook

    was_training = model.training
    handles = [model.model[i].register_forward_hook(keep(i)) for i in dict.fromkeys(layers)]
    try:
        model.eval()
        with torch.enable_grad():
            output = model(x)
            value, chosen, fallback = select_targets(model, output, conf, iou, max_det, target, x.shape[2:])
            activations = [captured[i] for i in layers]
            gradients = torch.autograd.grad(value, activations, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    gradients = [g if g is not None else torch.zeros_like(a) for a, g in zip(activations, gradients)]
    maps = class_activation_maps(activations, gradients, method)
    image_hw, input_hw = image_bgr.shape[:2], tuple(x.shape[2:])
    cams = {i: to_image_space(m, box, input_hw, image_hw) for i, m in zip(layers, maps)}
    detections = [to_detection(b, s, c, r, box, image_hw) for b, s, c, r in chosen]
    shapes = {i: tuple(captured[i].shape[1:]) for i in layers}
    return HeatmapResult(cams, detections, fallback, shapes)


def to_detection(b, score, cls: int, rotated: bool, box: Letterbox, image_hw: tuple[int, int]) -> Detection:
    """A target prediction in original-image pixels."""
    score = float(score.detach()) if hasattr(score, "detach") else float(score)
    if b is None:  # classification: no box
        return Detection((), score, cls)
    v = [float(t) for t in b.detach().cpu()]
    if rotated:
        cx, cy, w, h, angle = v
        return Detection(((cx - box.left) / box.ratio, (cy - box.top) / box.ratio, w / box.ratio, h / box.ratio,
                          angle), score, cls, True)
    x1, y1, x2, y2 = ((v[0] - box.left) / box.ratio, (v[1] - box.top) / box.ratio, (v[2] - box.left) / box.ratio,
                      (v[3] - box.top) / box.ratio)
    h, w = image_hw
    return Detection((min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)),
                     score, cls)


# --- drawing -------------------------------------------------------------------------------------------------
def overlay(image_bgr: np.ndarray, cam: np.ndarray, detections: list[Detection], names: dict, alpha: float = 0.5
            ) -> np.ndarray:
    """The image blended with the colour-mapped CAM (JET: red = high), detections drawn with cv2's own font."""
    import cv2

    colour = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(image_bgr, 1 - alpha, colour, alpha, 0)
    thickness = max(1, round(max(out.shape[:2]) / 400))
    taken: list[tuple[int, int, int, int]] = []  # label boxes already drawn, so labels never cover each other
    for d in detections:
        label = f"{names.get(d.cls, d.cls)} {d.score:.2f}"
        if not d.box:  # classification: the label in the corner
            cv2.putText(out, label, (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
            continue
        if d.rotated:
            cx, cy, w, h, angle = d.box
            corners = cv2.boxPoints(((cx, cy), (w, h), math.degrees(angle))).astype(np.int32)
            cv2.polylines(out, [corners], True, (255, 255, 255), thickness)
            x1, y1 = corners.min(0)
        else:
            x1, y1, x2, y2 = (int(round(v)) for v in d.box)
            cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), thickness)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        x, y = int(x1), max(int(y1) - 4, th + 2)
        while any(x < bx1 and bx0 < x + tw and y - th < by1 and by0 < y + base for bx0, by0, bx1, by1 in taken):
            y += th + base + 2  # move below the label in the way
        taken.append((x, y - th, x + tw, y + base))
        cv2.putText(out, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


# --- command line ----------------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m ultralytics_addmodules heatmap")
    p.description = ("为每张图、每个所选层生成叠加热力图（LayerCAM 或 Grad-CAM）并画出检测框。 | Overlay a "
                     "class-activation heatmap (LayerCAM or Grad-CAM) per image and chosen layer, detections drawn.")
    p.add_argument("model", help="模型 .pt 检查点或 YAML | model .pt checkpoint or YAML")
    p.add_argument("source", help="图片或图片文件夹 | an image or a folder of images")
    p.add_argument("--layers", nargs="+", default=None, metavar="N",
                   help="层号（默认：检测头读取的 P3/P4/P5） | layer indices (default: the head's inputs, P3/P4/P5)")
    p.add_argument("--method", default="layercam", help="layercam（默认）或 gradcam | layercam (default) or gradcam")
    p.add_argument("--target", default="score",
                   help="反传目标：score（类别分数，默认）、box（框坐标）、all | what to explain: score (class scores, "
                        "default), box (box coordinates) or all")
    p.add_argument("--imgsz", type=int, default=640, help="推理尺寸 | inference size (default 640)")
    p.add_argument("--conf", type=float, default=0.25, help="检测置信度阈值 | detection confidence threshold (0.25)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS 的 IoU 阈值 | NMS IoU threshold (0.7)")
    p.add_argument("--alpha", type=float, default=0.5, help="热力图不透明度 | heatmap opacity (0.5)")
    p.add_argument("--project", default="runs/heatmap", help="运行目录的上级目录 | parent folder of the run folder")
    p.add_argument("--name", default=None, help="运行目录名（默认：下一个编号） | run folder name (default: next number)")
    return p


def parse_layers(values: list[str] | None) -> list[int] | None:
    """Layer indices from ``--layers 16 19 22`` or ``--layers 16,19,22``; HeatmapError on anything else."""
    if not values:
        return None
    tokens = [t for v in values for t in v.split(",") if t.strip()]
    try:
        return [int(t) for t in tokens]
    except ValueError:
        raise HeatmapError(_bi(f"--layers 需要整数层号，收到 {' '.join(values)!r}",
                               f"--layers takes integer layer indices, got {' '.join(values)!r}")) from None


def check_args(args: argparse.Namespace) -> None:
    """HeatmapError for option values that cannot work (before anything is loaded)."""
    if args.method not in METHODS:
        raise HeatmapError(_bi(f"--method 只能是 {' 或 '.join(METHODS)}，收到 {args.method!r}",
                               f"--method must be {' or '.join(METHODS)}, got {args.method!r}"))
    if args.target not in TARGETS:
        raise HeatmapError(_bi(f"--target 只能是 {'、'.join(TARGETS)}，收到 {args.target!r}",
                               f"--target must be one of {', '.join(TARGETS)}, got {args.target!r}"))
    if args.imgsz < 32:
        raise HeatmapError(_bi(f"--imgsz 必须 ≥ 32，收到 {args.imgsz}", f"--imgsz must be >= 32, got {args.imgsz}"))
    for flag, value in (("--conf", args.conf), ("--iou", args.iou), ("--alpha", args.alpha)):
        if not 0.0 <= value <= 1.0:
            raise HeatmapError(_bi(f"{flag} 必须在 0 到 1 之间，收到 {value}", f"{flag} must be in [0, 1], got {value}"))


def run(args: argparse.Namespace) -> int:
    """Run the ``heatmap`` subcommand; returns the process exit code."""
    import cv2

    from .layers import load_model

    def error(e: HeatmapError) -> int:
        zh, _, en = str(e).partition(" | ")
        return fail(COMMAND, zh, en)

    try:
        check_args(args)
        layers = parse_layers(args.layers)
        images = list_images(args.source)
    except HeatmapError as e:
        return error(e)
    model, code = load_model(args.model, COMMAND)
    if model is None:
        return code
    model = model.float()
    try:
        check_model(model)
        check_layers(model, layers or default_layers(model))
    except HeatmapError as e:
        return error(e)
    names = getattr(model, "names", {}) or {}
    save_dir = new_run_dir(Path(args.project), args.name)
    rows = []
    for path in images:
        try:
            image = read_image(path)
            result = compute_heatmaps(model, image, layers, args.method, args.target, args.imgsz, args.conf, args.iou)
        except HeatmapError as e:  # one unreadable image must not stop the folder
            rows.append([path.name, "", "", "", "", str(e).partition(" | ")[2]])
            continue
        note = "top prediction (none above --conf)" if result.fallback else f"{len(result.detections)} detections"
        for i, cam in result.cams.items():
            out = save_dir / f"{path.stem}-layer{i}.jpg"
            cv2.imwrite(str(out), overlay(image, cam, result.detections, names, args.alpha))
            # e.g. P5 when every target was detected by the P3 branch: the head's P5 input did not contribute
            empty = "; no gradient reaches this layer" if not cam.any() else ""
            rows.append([path.name, str(i), "x".join(map(str, result.feature_shapes[i])), note + empty,
                         f"{args.method}/{args.target}", out.name])
    print(markdown_table(["Image", "Layer", "Feature map (CxHxW)", "Target", "Method", "File"], rows,
                         [False] * 6), end="")
    written = sum(1 for r in rows if r[1])
    if Path(args.model).suffix in (".yaml", ".yml"):
        print(_bi("注意：YAML 模型的权重是随机初始化的，热力图只用于检查流程；论文图请用训练好的 .pt",
                  "note: a YAML model has random weights, so these maps only check the pipeline; use a trained "
                  ".pt for figures"))
    print(f"\n{written} 张热力图已保存到 {save_dir} | {written} heatmaps saved to {save_dir}")
    return 0 if written else 1
