"""Side-by-side comparison of model YAMLs: parameters, GFLOPs, latency and (optionally) accuracy.

    python -m ultralytics_addmodules compare yolo11n.yaml yolo11n-MobileNetV4.yaml yolo11n-C3_UIB.yaml
    python -m ultralytics_addmodules compare yolo11n.yaml yolo11n-MobileNetV4.yaml --data dataset/data.yaml \\
        --epochs 20 --imgsz 160

For each model: parameters and GFLOPs exactly as ``model.info()`` reports them (GFLOPs at ``--imgsz``),
CPU latency of the fused model (median after warm-up, batch 1), GPU latency too when CUDA is present,
and with ``--data`` mAP50 / mAP50-95 after training every model with the same settings. Results go to a
numbered run folder (runs/compare/1, 2, ...): compare.csv, compare.md and compare.png (a Pareto plot:
mAP50-95 against latency with --data, parameters and GFLOPs against latency without). A model that fails
to build or train becomes a row with its error; the others still run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .cli import new_run_dir
from .dataset_check import DatasetError, check_dataset

COLUMNS_HELP = {
    "model": "model YAML (or .pt) as given",
    "params": "parameters, as model.info() reports",
    "gflops": "GFLOPs at the run's image size, as model.info(imgsz=...) reports",
    "cpu_ms": "CPU latency of the fused model, batch 1, median",
    "gpu_ms": "GPU latency (fp32), batch 1, median; empty without CUDA",
    "map50": "mAP50 on the val split after training (with --data)",
    "map50_95": "mAP50-95 on the val split after training (with --data)",
    "error": "why this model has no numbers",
}


@dataclass
class ModelResult:
    """One row of the comparison (NaN where not measured)."""

    model: str
    params: float = math.nan
    gflops: float = math.nan
    cpu_ms: float = math.nan
    gpu_ms: float = math.nan
    map50: float = math.nan
    map50_95: float = math.nan
    error: str = ""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def build_model(name: str, nc: int | None = None):
    """A YOLO object for ``name``; with ``nc``, a YAML model is rebuilt for that many classes (as training does)."""
    from ultralytics import YOLO

    yolo = YOLO(name)
    if nc is not None and str(name).endswith((".yaml", ".yml")) and yolo.model.yaml.get("nc") != nc:
        yolo.model = type(yolo.model)(copy.deepcopy(yolo.model.yaml), nc=nc, verbose=False)
    return yolo


def model_size(model, imgsz: int) -> tuple[int, float]:
    """(parameters, GFLOPs at ``imgsz``) of an Ultralytics model, as its ``info(imgsz=imgsz)`` reports them.

    ``info()`` returns nothing unless verbose, so the two Ultralytics functions it uses are called directly.
    """
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    return int(get_num_params(model)), float(get_flops(model, imgsz))


def latency_ms(model, imgsz: int, device: str = "cpu", warmup: int = 3, runs: int = 10) -> float:
    """Median forward time in milliseconds of the fused ``model`` on a 1x3ximgszximgsz input.

    A fused copy is timed (BatchNorm folded into convolutions, as in deployment), in eval mode without
    autograd. On CUDA, every run is synchronised so the time covers the whole forward pass.
    """
    fused = copy.deepcopy(model).float().to(device).eval()
    fused = fused.fuse(verbose=False) if hasattr(fused, "fuse") else fused
    x = torch.zeros(1, 3, imgsz, imgsz, device=device)
    cuda = torch.device(device).type == "cuda"
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fused(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def train_and_validate(yolo, data: Path, save_dir: Path, run_name: str, **train_args) -> tuple[float, float]:
    """Train ``yolo`` on ``data`` and return (mAP50, mAP50-95) of Ultralytics' final validation."""
    metrics = yolo.train(data=str(data), project=str(save_dir), name=run_name, exist_ok=True, **train_args)
    if metrics is None:
        raise RuntimeError("training returned no validation metrics")
    return float(metrics.box.map50), float(metrics.box.map)


def compare_models(models: list[str], data: str | None = None, epochs: int = 10, imgsz: int = 640,
                   batch: int = 16, device: str | None = None, workers: int = 2, save_dir: Path | None = None,
                   warmup: int = 3, runs: int = 10, plots: bool = False, progress: bool = True
                   ) -> list[ModelResult]:
    """Measure every model in ``models`` (see the module docstring); returns one row per model.

    Raises ``DatasetError`` before any work when ``data`` is given but the dataset is broken.
    """
    from ultralytics.utils import TQDM

    summary = check_dataset(data) if data else None
    cuda = torch.cuda.is_available()
    train_device = device if device is not None else ("0" if cuda else "cpu")
    results = []
    bar = TQDM(models, desc="compare", unit="model", disable=not progress)
    for index, name in enumerate(bar):
        bar.set_description(f"compare {name}")
        row = ModelResult(model=str(name))
        results.append(row)
        try:
            yolo = build_model(name, nc=summary.nc if summary else None)
            row.params, row.gflops = model_size(yolo.model, imgsz)
            row.cpu_ms = latency_ms(yolo.model, imgsz, "cpu", warmup, runs)
            if cuda:
                row.gpu_ms = latency_ms(yolo.model, imgsz, "cuda", warmup, runs)
            if summary:
                run_name = f"{index + 1}-{Path(str(name)).stem}"
                row.map50, row.map50_95 = train_and_validate(
                    yolo, summary.yaml_file, save_dir or Path("runs/compare"), run_name, epochs=epochs,
                    imgsz=imgsz, batch=batch, device=train_device, workers=workers, plots=plots, seed=0)
        except Exception as e:  # one broken model must not lose the others' results
            row.error = _one_line(e)
    return results


# --- output files --------------------------------------------------------------------------------------
def _fmt(value: float, digits: int) -> str:
    return "" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"


def write_csv(results: list[ModelResult], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[fd.name for fd in fields(ModelResult)])
        writer.writeheader()
        for r in results:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()})


def markdown_table(results: list[ModelResult], imgsz: int, with_map: bool) -> str:
    header = ["Model", "Params (M)", f"GFLOPs@{imgsz}", f"CPU ms@{imgsz}"]
    if any(not math.isnan(r.gpu_ms) for r in results):
        header.append(f"GPU ms@{imgsz}")
    if with_map:
        header += ["mAP50", "mAP50-95"]
    if any(r.error for r in results):
        header.append("Error")
    align = ["---"] + ["---:"] * (len(header) - 1)
    if "Error" in header:
        align[-1] = "---"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in results:
        cells = [r.model, _fmt(r.params / 1e6, 3), _fmt(r.gflops, 2), _fmt(r.cpu_ms, 1)]
        if f"GPU ms@{imgsz}" in header:
            cells.append(_fmt(r.gpu_ms, 2))
        if with_map:
            cells += [_fmt(r.map50, 3), _fmt(r.map50_95, 3)]
        if "Error" in header:
            cells.append(r.error.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not beaten by another with lower-or-equal x and higher-or-equal y, sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def plot(results: list[ModelResult], path: Path, imgsz: int, with_map: bool) -> None:
    """Pareto plot: mAP50-95 vs CPU latency (with training) or params / GFLOPs vs CPU latency."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display; matplotlib's bundled DejaVu font, nothing downloaded
    import matplotlib.pyplot as plt

    ok = [r for r in results if not r.error and not math.isnan(r.cpu_ms)]
    if with_map:
        panels = [("map50_95", "mAP50-95", True)]
    else:
        panels = [("params", "Parameters (M)", False), ("gflops", f"GFLOPs @ {imgsz}", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, label, higher_is_better) in zip(axes[0], panels):
        scale = 1e-6 if key == "params" else 1.0
        pts = [(r.cpu_ms, getattr(r, key) * scale) for r in ok if not math.isnan(getattr(r, key))]
        named = [r.model for r in ok if not math.isnan(getattr(r, key))]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", zorder=3)
        for (x, y), name in zip(pts, named):
            ax.annotate(Path(name).stem, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if pts:
            # "better" is up (accuracy) or down (size); flip y so the same front code serves both
            signed = [(x, y if higher_is_better else -y) for x, y in pts]
            front = pareto_front(signed)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--o", color="tab:orange",
                    markerfacecolor="none", markersize=11, label="Pareto front", zorder=2)
            ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.15, y=0.12)  # room for the labels of the outermost points
        ax.set_xlabel(f"CPU latency (ms, batch 1, {imgsz}x{imgsz})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Model comparison" + (" (failed models not shown)" if len(ok) < len(results) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: list[ModelResult], save_dir: Path, imgsz: int, with_map: bool) -> dict[str, Path]:
    paths = {"csv": save_dir / "compare.csv", "md": save_dir / "compare.md", "png": save_dir / "compare.png"}
    write_csv(results, paths["csv"])
    paths["md"].write_text(markdown_table(results, imgsz, with_map), encoding="utf-8")
    plot(results, paths["png"], imgsz, with_map)
    return paths


# --- command line --------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m ultralytics_addmodules compare")
    p.description = "Compare model YAMLs: params, GFLOPs, CPU/GPU latency and (with --data) mAP."
    p.add_argument("models", nargs="+", help="model YAMLs (bare names from yaml/ work) or .pt files")
    p.add_argument("--data", help="data YAML: train and validate every model on it (mAP columns)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per model with --data (default 10)")
    p.add_argument("--imgsz", type=int, default=640, help="image size for GFLOPs, latency and training")
    p.add_argument("--batch", type=int, default=16, help="training batch size (default 16)")
    p.add_argument("--device", default=None, help="training device: cpu, 0, ... (default: GPU 0 if present)")
    p.add_argument("--workers", type=int, default=2, help="data-loading workers for training")
    p.add_argument("--project", default="runs/compare", help="parent folder of the run folder")
    p.add_argument("--name", default=None, help="run folder name (default: next number)")
    p.add_argument("--runs", type=int, default=10, help="timed forward passes per model (median is kept)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forward passes before timing")
    p.add_argument("--plots", action="store_true", help="also write Ultralytics' training plots per model")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run the ``compare`` subcommand from parsed arguments; returns the process exit code."""
    import sys

    for name, value in (("--epochs", args.epochs), ("--imgsz", args.imgsz), ("--batch", args.batch),
                        ("--runs", args.runs)):
        if value < 1:
            print(f"compare: error: {name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.data:
        try:
            check_dataset(args.data)
        except DatasetError as e:
            print(f"compare: error: {e}", file=sys.stderr)
            return 2
    save_dir = new_run_dir(Path(args.project), args.name)
    results = compare_models(args.models, data=args.data, epochs=args.epochs, imgsz=args.imgsz,
                             batch=args.batch, device=args.device, workers=args.workers, save_dir=save_dir,
                             warmup=args.warmup, runs=args.runs, plots=args.plots)
    paths = write_outputs(results, save_dir, args.imgsz, with_map=bool(args.data))
    print()
    print(paths["md"].read_text(encoding="utf-8"), end="")
    print(f"\nresults saved to {save_dir} (compare.csv, compare.md, compare.png)")
    failed = [r.model for r in results if r.error]
    if failed:
        print(f"{len(failed)} of {len(results)} models failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if len(failed) == len(results) else 0
