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

    nc = nc or model.yaml["nc"]  # the model's class count (8.4 keeps no .nc on the model)
    model.args = get_cfg()
    model.train()
    g = torch.Generator().manual_seed(0)
    # two boxes per image, grouped by image as Ultralytics' collate gives them (8.4's loss relies on that order)
    targets = torch.tensor([[i // 2, i % nc, 0.5, 0.5, 0.3, 0.4] for i in range(2 * batch)], dtype=torch.float32)
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
    return float(loss.detach())


def fresh_python(code: str, cwd: Path | None = None, env: dict | None = None, python: str | None = None,
                 timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (as Ultralytics' DDP workers and the yolo CLI start)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([python or sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def randomize_and_calibrate_(model: torch.nn.Module, seed: int = 0, example: tuple = (4, 3, 64, 96)) -> torch.nn.Module:
    """Random norm affine parameters, then BatchNorm statistics measured on random inputs of shape ``example``
    (train mode), so features stay O(1) and folding the BatchNorms really changes the weights. Returns the
    model in eval mode."""
    from ultralytics_addmodules.deploy import calibrate_random_batchnorm_

    g = torch.Generator().manual_seed(seed)
    calibrate_random_batchnorm_(model, g, lambda gen: torch.randn(example, generator=gen))
    return model.eval()


def load_requested_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Load the weights that YAML lines asked for, as Ultralytics does after building a model.

    Backbone constructors only record the YAML's weights source (``requested_weights``, issue 19);
    ``weights.apply_requested_weights`` loads it. Skips the calling test where that function is not there yet.
    """
    import pytest

    from ultralytics_addmodules import weights

    apply = getattr(weights, "apply_requested_weights", None)
    if apply is None:
        pytest.skip("needs weights.apply_requested_weights: backbone constructors no longer load weights (issue 19)")
    apply(model)
    return model


# ---------------------------------------------------------------------------------------------------------
# Numeric comparisons. A random-weight network's outputs can be O(1) or O(100) and float32 rounding grows
# with them, so every bound here is relative to the scale of what is compared (max |reference|, per tensor),
# never a fixed absolute number. Each bound states what it was measured against (2 cores, 1 and 2 threads,
# issue 12) and is checked by a deliberate-mistake test that must still fail it.
# ---------------------------------------------------------------------------------------------------------
FUSE_REL = 2e-4
"""Fused vs unfused model (BatchNorm and layer scales folded into convolutions), float32, random calibrated
weights. Measured: <= 2e-5 of max |ref| (MobileNetV1 1.9e-5, MobileNetV4-HybridMedium 1.2e-5, others
2e-6..1.5e-5). Deliberate mistakes measured: one BatchNorm dropped instead of folded >= 0.35, one layer scale
dropped >= 0.08, BatchNorm eps 1e-3 instead of 1e-5 everywhere >= 0.24 (so >= 400x the bound)."""

PARITY_REL = 1e-4
"""Same weights in two implementations (ours vs timm / torchvision). Measured: bit-exact for the pure
convolutional networks, <= 3.3e-6 for MobileNetV4's hybrid attention. Mistakes measured: BatchNorm eps 1e-3
instead of 1e-5 >= 0.07, one layer scale dropped >= 0.078."""

NOISE_PERCENTILE = 99.9
NOISE_FACTOR = 4.0
NOISE_FACTOR_MAX = 10.0
"""Whole detectors (exported to ONNX Runtime / TorchScript, or fused) vs PyTorch float32: random detectors are
ill-conditioned (float32 PyTorch differs from float64 by up to ~0.01 px for EfficientNetV2 at 64x64), so the
bound follows float32's own rounding noise, measured on the same inputs as |float32 - float64| of the PyTorch
model and floored at one float32 ulp of the output's scale. The error's 99.9th percentile over several inputs
may be NOISE_FACTOR times the noise's, its worst element NOISE_FACTOR_MAX times the noise's worst. Measured on
the shipped YAMLs (4 inputs, ONNX and TorchScript): percentile ratio <= 1.6, max ratio <= 2.1. Mistakes
measured: one backbone BatchNorm with eps 1e-3 instead of 1e-5 in the export, >= 1e3 times the bound."""


def _tensors(x) -> list:
    """A tensor / array, or a (nested) list or tuple of them, as a flat list."""
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return [x]


def _float64(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def assert_close_to_scale(actual, ref, rel: float, what: str = "output", min_scale: float = 0.0) -> float:
    """Assert ``max |actual - ref| <= rel * max |ref|`` for a tensor, or for each pair of two equally long
    sequences of tensors (each against its own scale). ``min_scale`` guards against comparing two near-zero
    maps, which would prove nothing. Returns the worst relative error seen (error / scale), for printing."""
    actual, ref = _tensors(actual), _tensors(ref)
    assert len(actual) == len(ref), f"{what}: {len(actual)} tensors vs {len(ref)} in the reference"
    worst = 0.0
    for i, (a, r) in enumerate(zip(actual, ref)):
        name = what if len(ref) == 1 else f"{what}[{i}]"
        a, r = _float64(a), _float64(r)
        assert a.shape == r.shape, f"{name}: shape {a.shape} vs {r.shape} in the reference"
        scale = float(np.abs(r).max()) if r.size else 0.0
        assert scale > min_scale, f"{name}: reference scale max|ref| = {scale:.3g} <= {min_scale:g}; nothing to compare"
        error = float(np.abs(a - r).max()) if r.size else 0.0
        bound = rel * scale
        # `<=` is False for NaN: a NaN error fails too
        assert error <= bound, (f"{name}: max |actual - ref| = {error:.3g} exceeds the bound {bound:.3g} = {rel:g} x "
                                f"reference scale max|ref| {scale:.3g} (relative error {error / scale:.3g})")
        worst = max(worst, error / scale if scale else 0.0)
    print(f"{what}: worst relative error {worst:.3g} (bound {rel:g} x max|ref|)")  # shown with -s: the margin
    return worst


class Float32Reference:
    """PyTorch float32 outputs of ``model`` (put in eval mode) for several inputs, and float32's rounding noise
    on each element (|float32 - float64| of the same model on the same input). ``pick`` selects the compared
    tensor from a list / tuple output (default: the first, e.g. the Detect output of a detector in eval mode)."""

    def __init__(self, model: torch.nn.Module | None, inputs: list[torch.Tensor], pick=lambda out: out[0]):
        import copy

        if model is None:  # filled by from_arrays
            return
        model = model.float().eval()
        exact = copy.deepcopy(model).double()
        outputs, exact_outputs = [], []
        with torch.no_grad():
            for x in inputs:
                outputs.append(_pick(pick, model(x)))
                exact_outputs.append(_pick(pick, exact(x.double())))
        self._set(outputs, exact_outputs)

    @classmethod
    def from_arrays(cls, outputs: list, exact_outputs: list) -> "Float32Reference":
        """From float32 outputs and the float64 model's outputs computed elsewhere (e.g. in a subprocess)."""
        ref = cls(None, [])
        ref._set(outputs, exact_outputs)
        return ref

    def _set(self, outputs: list, exact_outputs: list) -> None:
        self.outputs = [_float64(o) for o in outputs]
        self.noise = np.concatenate([np.abs(o - _float64(e)).ravel() for o, e in zip(self.outputs, exact_outputs)])
        self.scale = max(float(np.abs(o).max()) for o in self.outputs)


def _pick(pick, out):
    return pick(out) if isinstance(out, (list, tuple)) else out


def assert_matches_float32_reference(got: list, ref: Float32Reference, what: str = "export") -> str:
    """Compare outputs ``got`` (one per input of ``ref``) against the PyTorch float32 outputs, within a stated
    factor of float32's own rounding noise at a high percentile and at the worst element (see
    NOISE_FACTOR). Returns a one-line summary for printing."""
    got = [_float64(g) for g in got]
    assert len(got) == len(ref.outputs), f"{what}: {len(got)} outputs for {len(ref.outputs)} inputs"
    for g, r in zip(got, ref.outputs):
        assert g.shape == r.shape, f"{what}: shape {g.shape} vs {r.shape} in PyTorch"
    errors = np.concatenate([np.abs(g - r).ravel() for g, r in zip(got, ref.outputs)])
    ulp = float(np.spacing(np.float32(ref.scale)))  # float32 cannot resolve less at the output's scale
    noise_p = max(float(np.percentile(ref.noise, NOISE_PERCENTILE)), ulp)
    noise_max = max(float(ref.noise.max()), ulp)
    error_p, error_max = float(np.percentile(errors, NOISE_PERCENTILE)), float(errors.max())
    summary = (f"{what} vs PyTorch float32 over {len(got)} inputs: {NOISE_PERCENTILE}th percentile "
               f"{error_p:.3g} (float32 noise {noise_p:.3g}, limit {NOISE_FACTOR:g}x), max {error_max:.3g} "
               f"(noise {noise_max:.3g}, limit {NOISE_FACTOR_MAX:g}x); output scale {ref.scale:.3g}")
    assert error_p <= NOISE_FACTOR * noise_p and error_max <= NOISE_FACTOR_MAX * noise_max, summary
    return summary


MISTAKES = ("bn_dropped", "bn_eps", "layer_scale_dropped")


def make_mistake_(model: torch.nn.Module, mistake: str) -> torch.nn.Module:
    """Change ``model`` in place so that it computes what a faulty fuse, conversion or export would, to show a
    tolerance still fails on it: "bn_dropped" replaces the middle BatchNorm2d by an identity (dropped instead of
    folded), "bn_eps" sets every BatchNorm2d's eps to 1e-3 (torchvision's, instead of our 1e-5),
    "layer_scale_dropped" sets the last layer scale to 1 (as if ignored)."""
    with torch.no_grad():
        if mistake == "bn_dropped":
            names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
            parent, _, child = names[len(names) // 2].rpartition(".")
            setattr(model.get_submodule(parent), child, torch.nn.Identity())
        elif mistake == "bn_eps":
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eps = 1e-3
        elif mistake == "layer_scale_dropped":
            [m for m in model.modules() if type(m).__name__ == "LayerScale2d"][-1].gamma.fill_(1.0)
        else:
            raise ValueError(f"unknown mistake {mistake!r}; valid: {', '.join(MISTAKES)}")
    return model


def save_like_ultralytics(yaml_name: str, path: Path, seed: int = 0) -> Path:
    """A checkpoint of a stock Ultralytics model with random weights, written the way Ultralytics writes its
    released ones (the trainer's dict with the EMA model in fp16, then ``strip_optimizer``).

    Every float tensor is random, so a tensor copied from it cannot equal a freshly initialised one by chance.
    """
    from copy import deepcopy

    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel, guess_model_task
    from ultralytics.utils.torch_utils import strip_optimizer

    torch.manual_seed(seed)
    task_model = SegmentationModel if "-seg" in yaml_name else DetectionModel
    model = task_model(yaml_name, verbose=False)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.dtype.is_floating_point:
                tensor.copy_(torch.rand_like(tensor) - 0.5)
    model.args = {**DEFAULT_CFG_DICT, "task": guess_model_task(model)}
    torch.save({"epoch": 0, "best_fitness": None, "model": None, "ema": deepcopy(model).half(), "updates": 1,
                "optimizer": None, "train_args": dict(DEFAULT_CFG_DICT), "date": None, "version": "8.3.0"}, path)
    strip_optimizer(path)
    return path


def read_ultralytics_checkpoint(path) -> torch.nn.Module:
    """The model of a checkpoint as the installed Ultralytics reads it (float32)."""
    from ultralytics.nn import tasks

    load = getattr(tasks, "load_checkpoint", None) or tasks.attempt_load_one_weight  # 8.4 renamed it
    return load(str(path))[0]


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


def buildable_model_yamls(task: str | None = None) -> list[str]:
    """Names of the shipped model YAMLs (of one task, or all) that the installed Ultralytics can build."""
    from ultralytics_addmodules.model_yamls import list_model_yamls

    paths = list_model_yamls(task) if task else list_model_yamls()
    return [p.name for p in paths if not needs_newer_release(p)]


def load_script(relative_path: str, name: str):
    """A repository script (``train.py``, ``benchmarks/run.py``) imported as a fresh module named ``name``,
    without running its ``__main__`` block."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
