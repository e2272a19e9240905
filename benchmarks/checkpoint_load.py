"""Checkpoint load time: the add-on's safe loading against stock Ultralytics, same files, one process.

    python benchmarks/checkpoint_load.py                 # trains a tiny yolo11n run for its files (~1 min)
    python benchmarks/checkpoint_load.py --rounds 31 --files a.pt b.pt

Files: the last.pt a training run writes after each epoch (model, EMA, optimizer, metrics), the final stripped
last.pt, and YOLO.save() files of yolo11s and two of our backbones. For each file, in interleaved rounds (one load
of each variant in turn, so background load hits all alike), medians of:

* stock: ``torch.load(weights_only=False)``, what Ultralytics' torch_safe_load does (runs any code in the file);
* ours: ``checkpoints.safe_load`` (stand-in inspection, then the same C unpickler limited to what it approved),
  as the first load of the file in a process;
* ours, seen: the same file again in the same process (the verdict on its pickle is remembered);
* inspect: the stand-in inspection alone (part of ours);
* weights_only: ``torch.load(weights_only=True)`` with the file's globals allowed, the alternative not taken;

and the same comparison end to end through ``tasks.torch_safe_load`` (suffix check, asset lookup, renames) and
``YOLO(path)`` (what a user waits for).
Ratios divide by stock, measured in this run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")


def make_files(work: Path) -> list[Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import make_tiny_dataset
    from ultralytics import YOLO

    data = make_tiny_dataset(work / "data", n_train=4, n_val=2)
    files = []

    def keep(trainer):
        files.append(work / "training-last.pt")
        shutil.copy(trainer.last, files[-1])

    yolo = YOLO("yolo11n.yaml")
    yolo.add_callback("on_model_save", keep)
    yolo.train(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False, amp=False,
               project=str(work), name="run", verbose=False)
    files.append(work / "final-yolo11n.pt")
    shutil.copy(work / "run" / "weights" / "last.pt", files[-1])
    for name in ("yolo11s.yaml", "yolo11n-MobileNetV4.yaml", "yolo11n-EfficientNetV2.yaml"):
        files.append(work / f"saved-{Path(name).stem}.pt")
        yolo = YOLO(name)
        yolo.ckpt = yolo.ckpt or {}  # 8.3.0's YOLO.save() needs one; a model built from a YAML has none
        yolo.save(str(files[-1]))
    return files


def variants(path: Path) -> dict:
    import torch
    from ultralytics import YOLO

    from ultralytics_addmodules import checkpoints
    from ultralytics_addmodules.patch import STOCK, _torch_safe_load

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    trace = checkpoints.inspect_pickle(data)
    allowed = []
    for full in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        module, name = checkpoints.canonical(*full.rsplit(".", 1))
        allowed.append((checkpoints.resolve(module, name), full))
    if any(name == "numpy.dtype" for _, name in allowed):  # weights_only also checks the type a dtype is built as
        import numpy

        allowed += [getattr(numpy.dtypes, name) for name in numpy.dtypes.__all__]

    def weights_only():
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)

    def cold(load):  # as the first load of this file in a process: no remembered verdict
        def run():
            checkpoints._verdicts.clear()
            return load()

        return run

    assert trace.problems == [], trace.problems
    return {
        "stock": lambda: torch.load(path, map_location="cpu", weights_only=False),
        "ours": cold(lambda: checkpoints.safe_load(path)),
        "ours, seen": lambda: checkpoints.safe_load(path),
        "inspect": lambda: checkpoints.inspect_pickle(data),
        "weights_only": weights_only,
        "stock torch_safe_load": lambda: STOCK["torch_safe_load"](str(path)),
        "ours torch_safe_load": cold(lambda: _torch_safe_load(str(path))),
        "stock YOLO()": lambda: stock_yolo(path),
        "ours YOLO()": cold(lambda: YOLO(str(path))),
    }


def stock_yolo(path: Path):
    """``YOLO(path)`` as stock Ultralytics loads it (our torch_safe_load swapped out for the call)."""
    from ultralytics import YOLO
    from ultralytics.nn import tasks

    from ultralytics_addmodules.patch import STOCK

    ours = tasks.torch_safe_load
    tasks.torch_safe_load = STOCK["torch_safe_load"]
    try:
        return YOLO(str(path))
    finally:
        tasks.torch_safe_load = ours


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Checkpoint load time: safe loading vs stock Ultralytics")
    p.add_argument("--files", nargs="*", type=Path, help="checkpoints to load (default: made by a tiny training)")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    import ultralytics_addmodules  # noqa: F401  (activates: our torch_safe_load, our YAMLs)
    from ultralytics_addmodules.cli import markdown_table

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    try:
        files = args.files or make_files(work)
        rows, ratios, ratios_seen, ratios_e2e, ratios_yolo = [], [], [], [], []
        for path in files:
            fns = variants(path)
            for fn in fns.values():
                fn()  # warm-up: imports, caches
            times = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
            med = {name: statistics.median(v) * 1000 for name, v in times.items()}
            ratios.append(med["ours"] / med["stock"])
            ratios_seen.append(med["ours, seen"] / med["stock"])
            ratios_e2e.append(med["ours torch_safe_load"] / med["stock torch_safe_load"])
            ratios_yolo.append(med["ours YOLO()"] / med["stock YOLO()"])
            rows.append([path.name, f"{path.stat().st_size / 1e6:.1f}", f"{med['stock']:.1f}", f"{med['ours']:.1f}",
                         f"{med['inspect']:.1f}", f"{med['weights_only']:.1f}", f"{ratios[-1]:.3f}",
                         f"{ratios_seen[-1]:.3f}", f"{med['weights_only'] / med['stock']:.2f}",
                         f"{ratios_e2e[-1]:.3f}", f"{med['stock YOLO()']:.1f}", f"{ratios_yolo[-1]:.3f}"])
        print(markdown_table(["file", "MB", "stock ms", "ours ms", "inspect ms", "weights_only ms", "ours/stock",
                              "seen/stock", "weights_only/stock", "torch_safe_load ours/stock", "stock YOLO() ms",
                              "YOLO() ours/stock"], rows, [False] + [True] * 11))
        gmean = statistics.geometric_mean
        print(f"geometric mean over files: ours/stock {gmean(ratios):.3f} (first load of a file), "
              f"{gmean(ratios_seen):.3f} (seen before in the process), {gmean(ratios_e2e):.3f} (torch_safe_load, "
              f"first load), {gmean(ratios_yolo):.3f} (YOLO(path), first load); {args.rounds} interleaved rounds, "
              f"{args.threads} threads")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
