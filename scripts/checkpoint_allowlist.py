"""Derive ``ultralytics_addmodules/checkpoint_allowlist.txt`` from real checkpoints (issue 17).

Trains tiny models (1 epoch, 64 px, a generated dataset) for every Ultralytics task with stock YAMLs and for each
of our backbone families, keeps every kind of file training and users write (``last.pt`` during training with
optimizer and EMA, ``epoch0.pt``, the final stripped ``last.pt``/``best.pt``, ``YOLO.save()`` of a fused model),
runs each file's pickle against stand-ins (``checkpoints.inspect_pickle``: nothing in it runs) and writes the
union of what they use into the package's allowlist, with the releases and runs it came from.

    python scripts/checkpoint_allowlist.py                                   # this environment's Ultralytics
    python scripts/checkpoint_allowlist.py --python /work/venv84/bin/python  # ... and another release too

An environment with an older Ultralytics (8.2.0 was used: up to 8.2.x, Segment/Pose/OBB heads kept ``Detect.forward``
as an attribute, which official YOLOv8 and YOLO11 -seg/-pose/-obb weights still carry) contributes the formats of
official weights; there the add-on is inactive, so only the stock runs (YOLOv8 YAMLs before 8.3) are trained.

Our own nn.Module classes (and torch.nn, Ultralytics, timm, torchvision ones) are allowed by rule in
``checkpoints.MODULE_FAMILIES``, so a new module of ours needs no regeneration; rerun this when a supported
Ultralytics release, torch or numpy changes what checkpoints contain. Takes a few minutes per release.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "ultralytics_addmodules" / "checkpoint_allowlist.txt"

# (task, model YAML): stock for every task, ours on the detect head (the heads are stock's in every task).
STOCK_RUNS = [("detect", "yolo11n.yaml"), ("segment", "yolo11n-seg.yaml"), ("pose", "yolo11n-pose.yaml"),
              ("obb", "yolo11n-obb.yaml"), ("classify", "yolo11n-cls.yaml")]
OUR_RUNS = [("detect", f"yolo11n-{family}.yaml")
            for family in ("MobileNetV4", "EfficientNetV2", "MobileNetV1", "C3_UIB", "timm")]


def data_pickle(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def train_and_save(task: str, model: str, work: Path) -> list[Path]:
    """Train ``model`` for one epoch and return every checkpoint file that run produced."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import make_tiny_task_dataset
    from ultralytics import YOLO

    data = work / f"data-{task}"
    if not data.exists():
        make_tiny_task_dataset(data, task)
    data_arg = data if task == "classify" else data / "data.yaml"
    label = f"{task}-{Path(model).stem}"
    kept = work / "files"
    kept.mkdir(exist_ok=True)

    def keep_training_file(trainer):  # last.pt as saved during training: model, EMA, optimizer, metrics
        shutil.copy(trainer.last, kept / f"{label}-last-epoch{trainer.epoch}.pt")

    yolo = YOLO(model, task=task)
    yolo.add_callback("on_model_save", keep_training_file)
    yolo.train(data=str(data_arg), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False, amp=False,
               save_period=1, project=str(work / "runs"), name=label, exist_ok=True, verbose=False)
    weights = work / "runs" / label / "weights"
    files = sorted(kept.glob(f"{label}-*.pt")) + sorted(weights.glob("*.pt"))
    fused = YOLO(weights / "best.pt")
    fused.fuse()
    fused.save(str(kept / f"{label}-fused.pt"))  # a user's save of a fused model: bound forward_fuse methods
    return files + [kept / f"{label}-fused.pt"]


def runs_for(version: tuple[int, ...], active: bool) -> list[tuple[str, str]]:
    """The runs this release can train: ours only where the add-on is active, YOLOv8 YAMLs before YOLO11 (8.3)."""
    runs = STOCK_RUNS + OUR_RUNS if active else STOCK_RUNS
    return [(t, m.replace("yolo11n", "yolov8n")) for t, m in runs] if version < (8, 3) else runs


def collect(work: Path) -> dict:
    """Train every run in this environment and return what each checkpoint file asks for."""
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ["ULTRALYTICS_ADDMODULES_TRUST_CHECKPOINTS"] = "1"  # the files loaded here are the ones it just made
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # releases before 8.3 rely on torch's old default
    import numpy
    import torch
    import ultralytics

    import ultralytics_addmodules  # (activates the add-on where supported: our YAMLs, our save path)
    from ultralytics_addmodules.checkpoints import inspect_pickle
    from ultralytics_addmodules.compat import version_tuple

    runs = runs_for(version_tuple(ultralytics.__version__), ultralytics_addmodules.is_active())
    result = {"ultralytics": ultralytics.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
              "runs": [f"{t}/{m}" for t, m in runs], "files": {}}
    for task, model in runs:
        for path in train_and_save(task, model, work):
            trace = inspect_pickle(data_pickle(path))
            result["files"][f"{ultralytics.__version__}/{path.parent.parent.name}/{path.name}"] = {
                "uses": {name: sorted(kinds) for name, kinds in trace.uses.items()},
                "attributes": sorted(f"{owner}.{attribute}" for owner, attribute in trace.attributes),
                "problems": trace.problems,
            }
            if trace.problems:
                print(f"WARNING: {path}: the inspection rejects a genuine file: {trace.problems}", file=sys.stderr)
    return result


def write_allowlist(collected: list[dict], output: Path = OUTPUT) -> int:
    """Merge what the environments' files use into the allowlist file; returns its number of entries."""
    uses: dict[str, set[str]] = {}
    attributes: set[str] = set()
    for env in collected:
        for info in env["files"].values():
            for name, kinds in info["uses"].items():
                uses.setdefault(name, set()).update(kinds)
            attributes.update(info["attributes"])
    lines = []
    for name in sorted(uses):
        kinds = sorted(uses[name] - {"ref"}) or ["ref"]  # any other use implies the reference
        lines += [f"{kind:<5} {name}" for kind in kinds]
    lines += [f"attr  {a}" for a in sorted(attributes)]
    sources = "; ".join(f"Ultralytics {e['ultralytics']} (torch {e['torch']}, numpy {e['numpy']}): "
                        f"{len(e['files'])} files of {len(e['runs'])} runs" for e in collected)
    header = [
        "# Globals genuine checkpoints contain, and how their pickles use them (issue 17).",
        "# Generated by scripts/checkpoint_allowlist.py from the files of real training runs; do not edit by hand.",
        f"# Sources: {sources}.",
        f"# Runs: {', '.join(f'{t}/{m}' for t, m in STOCK_RUNS + OUR_RUNS)} (YOLOv8 YAMLs before 8.3, ours only",
        "# where the add-on is active); files: last.pt during training, epoch0.pt, final last.pt/best.pt, YOLO.save()",
        "# of a fused model.",
        "# Kinds: new = rebuilt from saved state (its class is never called); call = called with arguments;",
        "# state = saved state applied to what such a call returned; ref = referenced only; attr = getattr pair.",
        "# Besides these, checkpoints.MODULE_FAMILIES allows any nn.Module subclass of torch.nn, Ultralytics, this",
        "# package's nn, timm and torchvision to be rebuilt (new), never called.",
    ]
    output.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    return len(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", action="append", default=[], help="also collect in this interpreter's environment")
    p.add_argument("--collect-only", metavar="JSON", help=argparse.SUPPRESS)  # used for --python environments
    p.add_argument("--keep", metavar="DIR", help="keep the runs and checkpoint files in DIR")
    args = p.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="ckpt-allowlist-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.collect_only:
            Path(args.collect_only).write_text(json.dumps(collect(work)))
            return
        collected = [collect(work / "here")]
        for k, python in enumerate(args.python):
            out = work / f"other{k}.json"
            env = {**os.environ, "PYTHONPATH": str(REPO), "YOLO_OFFLINE": "true"}
            subprocess.run([python, __file__, "--collect-only", str(out), "--keep", str(work / f"other{k}")],
                           env=env, check=True)
            collected.append(json.loads(out.read_text()))
        (work / "collected.json").write_text(json.dumps(collected, indent=1))
        n = write_allowlist(collected)
        print(f"wrote {OUTPUT.relative_to(REPO)}: {n} entries from "
              f"{sum(len(e['files']) for e in collected)} checkpoint files")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
