"""Test helpers shared by the suite (import with ``from helpers import ...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def make_tiny_dataset(root: Path, n_train: int = 8, n_val: int = 4, imgsz: int = 64, nc: int = 2) -> Path:
    """Write a tiny seeded YOLO dataset (coloured rectangles on noise) and return its data YAML path."""
    import cv2

    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for k in range(count):
            img = rng.integers(0, 60, (imgsz, imgsz, 3), dtype=np.uint8)
            lines = []
            for _ in range(2):
                cls = int(rng.integers(0, nc))
                w, h = rng.integers(imgsz // 4, imgsz // 2, 2)
                x0, y0 = rng.integers(0, imgsz - w), rng.integers(0, imgsz - h)
                img[y0:y0 + h, x0:x0 + w] = (255, 60, 60) if cls == 0 else (60, 255, 60)
                lines.append(f"{cls} {(x0 + w / 2) / imgsz:.5f} {(y0 + h / 2) / imgsz:.5f} {w / imgsz:.5f} {h / imgsz:.5f}")
            cv2.imwrite(str(root / split / "images" / f"{k:03d}.jpg"), img)
            (root / split / "labels" / f"{k:03d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: class{i}" for i in range(nc))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: train/images\nval: val/images\nnames:\n{names}\n")
    return data


TASK_MODELS = {"detect": "yolo11n.yaml", "segment": "yolo11n-seg.yaml", "pose": "yolo11n-pose.yaml",
               "obb": "yolo11n-obb.yaml", "classify": "yolo11n-cls.yaml"}


def make_tiny_task_dataset(root: Path, task: str, n_train: int = 4, n_val: int = 2, imgsz: int = 64) -> Path:
    """A tiny seeded dataset for any Ultralytics task (one coloured rectangle per image, 2 classes): the data YAML
    for detect/segment/pose/obb (box, polygon, box + centre keypoint, corners), the folder for classify."""
    import cv2

    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        for k in range(count):
            cls = k % 2
            img = rng.integers(0, 60, (imgsz, imgsz, 3), dtype=np.uint8)
            w, h = rng.integers(imgsz // 4, imgsz // 2, 2)
            x0, y0 = rng.integers(0, imgsz - w), rng.integers(0, imgsz - h)
            img[y0:y0 + h, x0:x0 + w] = (255, 60, 60) if cls == 0 else (60, 255, 60)
            if task == "classify":
                (root / split / f"class{cls}").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / split / f"class{cls}" / f"{k:03d}.jpg"), img)
                continue
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            x1, y1, x2, y2 = x0 / imgsz, y0 / imgsz, (x0 + w) / imgsz, (y0 + h) / imgsz
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            label = {"detect": f"{cx:.5f} {cy:.5f} {x2 - x1:.5f} {y2 - y1:.5f}",
                     "pose": f"{cx:.5f} {cy:.5f} {x2 - x1:.5f} {y2 - y1:.5f} {cx:.5f} {cy:.5f} 2",
                     "segment": f"{x1:.5f} {y1:.5f} {x2:.5f} {y1:.5f} {x2:.5f} {y2:.5f} {x1:.5f} {y2:.5f}",
                     "obb": f"{x1:.5f} {y1:.5f} {x2:.5f} {y1:.5f} {x2:.5f} {y2:.5f} {x1:.5f} {y2:.5f}"}[task]
            cv2.imwrite(str(root / split / "images" / f"{k:03d}.jpg"), img)
            (root / split / "labels" / f"{k:03d}.txt").write_text(f"{cls} {label}\n")
    if task == "classify":
        return root
    extra = "kpt_shape: [1, 3]\nflip_idx: [0]\n" if task == "pose" else ""
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: train/images\nval: val/images\n{extra}names:\n  0: class0\n  1: class1\n")
    return data


def train_one_step(model, imgsz: int = 64, batch: int = 2, nc: int | None = None) -> float:
    """One optimiser step of an Ultralytics detection model on a random batch; returns the loss.

    Asserts the loss is finite and that the step changed the weights.
    """
    from ultralytics.cfg import get_cfg

    nc = nc or model.nc
    model.args = get_cfg()
    model.train()
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([[i % batch, i % nc, 0.5, 0.5, 0.3, 0.4] for i in range(2 * batch)], dtype=torch.float32)
    data = {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
        "batch_idx": targets[:, 0],
        "cls": targets[:, 1:2],
        "bboxes": targets[:, 2:],
    }
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.01)
    loss, _ = model.loss(data)
    loss = loss.sum()
    assert torch.isfinite(loss), f"non-finite loss {loss}"
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params)), "training step changed nothing"
    return float(loss)


def fresh_python(code: str, cwd: Path | None = None, env: dict | None = None, python: str | None = None,
                 timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (as Ultralytics' DDP workers and the yolo CLI start)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([python or sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def randomize_and_calibrate_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random norm affine parameters, then BatchNorm statistics measured on random images (train mode),
    so features stay O(1) and an absolute parity tolerance is meaningful. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 64, 96, generator=g))
    return model.eval()


def release() -> tuple[int, int]:
    """(major, minor) of the installed Ultralytics."""
    import ultralytics

    from ultralytics_addmodules.compat import version_tuple

    return version_tuple(ultralytics.__version__)[:2]


def needs_newer_release(yaml_path: Path) -> bool:
    """Whether a shipped model YAML needs a newer Ultralytics than the installed one (YOLO12/YOLO26 need 8.4)."""
    import yaml

    d = yaml.safe_load(Path(yaml_path).read_text())
    uses_84 = "end2end" in d or any(row[2] == "A2C2f" for row in d["backbone"] + d["head"])
    return uses_84 and release() < (8, 4)
