"""Side-by-side comparison of model YAMLs: parameters, GFLOPs, latency and (optionally) accuracy.

    python -m ultralytics_addmodules compare yolo11n.yaml yolo11n-MobileNetV4.yaml yolo11n-C3_UIB.yaml
    python -m ultralytics_addmodules compare yolo11n.yaml yolo11n-MobileNetV4.yaml --data dataset/data.yaml \\
        --epochs 20 --imgsz 160 --seeds 3

For each model: parameters and GFLOPs exactly as ``model.info()`` reports them (GFLOPs at ``--imgsz``);
CPU latency of the fused model with the protocol of ``measure.py`` (all models interleaved, fixed threads,
warm-up, median and interquartile range, outliers flagged, FPS = 1000 / median), GPU latency too when CUDA
is present; the per-layer cost of each model (``layers.py``); and with ``--data`` mAP50 / mAP50-95 after
training every model with the same settings, once per seed (``--seeds N``: mean +/- standard deviation,
and the table marks differences from the best model that are smaller than the run-to-run spread).

Results go to a numbered run folder (runs/compare/1, 2, ...): compare.csv, compare.md (table and latency
protocol), compare.png (Pareto plot: mAP50-95 against latency with --data, parameters and GFLOPs against
latency without), runs.csv (one row per training run, with --data) and layers-<model>.md / .csv. A model
that fails to build or train becomes a row with its error; the others still run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .cli import fail, new_run_dir
from .dataset_check import DatasetError, check_dataset
from .measure import (
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    LatencyStats,
    default_threads,
    measure_latency,
    model_size,
    one_line,
    protocol,
    spread_warning,
    torch_runner,
    torch_runtime,
)

COMMAND = "compare"
CSV_COLUMNS = {
    "model": "model YAML (or .pt) as given",
    "params": "parameters, as model.info() reports",
    "gflops": "GFLOPs at the run's image size, as model.info(imgsz=...) reports",
    "cpu_ms": "CPU latency of the fused model, batch 1, median over the timed runs",
    "cpu_q1_ms": "first quartile of the CPU latency",
    "cpu_q3_ms": "third quartile of the CPU latency",
    "cpu_outliers": "timed CPU runs beyond 1.5 x IQR outside the quartiles",
    "fps": "1000 / cpu_ms",
    "gpu_ms": "GPU latency (fp32), batch 1, median; empty without CUDA",
    "gpu_q1_ms": "first quartile of the GPU latency",
    "gpu_q3_ms": "third quartile of the GPU latency",
    "map50": "mAP50 on the val split after training (mean over seeds, with --data)",
    "map50_std": "sample standard deviation of mAP50 over seeds (with --seeds >= 2)",
    "map50_95": "mAP50-95 on the val split after training (mean over seeds, with --data)",
    "map50_95_std": "sample standard deviation of mAP50-95 over seeds (with --seeds >= 2)",
    "seeds": "training runs that finished",
    "error": "why this model has no numbers",
}


@dataclass
class TrainRun:
    """One training run of one model with one seed."""

    seed: int
    map50: float
    map50_95: float


@dataclass
class ModelResult:
    """One row of the comparison (NaN / None where not measured)."""

    model: str
    params: float = math.nan
    gflops: float = math.nan
    cpu: LatencyStats | None = None
    gpu: LatencyStats | None = None
    runs: list[TrainRun] = field(default_factory=list)
    error: str = ""

    @property
    def cpu_ms(self) -> float:
        return self.cpu.median_ms if self.cpu else math.nan

    def metric(self, key: str) -> list[float]:
        """Values of ``key`` ("map50" or "map50_95") over the finished training runs."""
        return [getattr(r, key) for r in self.runs]

    def mean(self, key: str) -> float:
        values = self.metric(key)
        return statistics.fmean(values) if values else math.nan

    def std(self, key: str) -> float:
        """Sample standard deviation over seeds (NaN with fewer than two runs)."""
        values = self.metric(key)
        return statistics.stdev(values) if len(values) > 1 else math.nan


def build_model(name: str, nc: int | None = None):
    """A YOLO object for ``name``; with ``nc``, a YAML model is rebuilt for that many classes (as training does)."""
    from ultralytics import YOLO

    yolo = YOLO(name)
    if nc is not None and str(name).endswith((".yaml", ".yml")) and yolo.model.yaml.get("nc") != nc:
        yolo.model = type(yolo.model)(copy.deepcopy(yolo.model.yaml), nc=nc, verbose=False)
    return yolo


def train_and_validate(yolo, data: Path, save_dir: Path, run_name: str, **train_args) -> tuple[float, float]:
    """Train ``yolo`` on ``data`` and return (mAP50, mAP50-95) of Ultralytics' final validation."""
    metrics = yolo.train(data=str(data), project=str(save_dir), name=run_name, exist_ok=True, **train_args)
    if metrics is None:
        raise RuntimeError("training returned no validation metrics")
    return float(metrics.box.map50), float(metrics.box.map)


def compare_models(models: list[str], data: str | None = None, epochs: int = 10, imgsz: int = 640,
                   batch: int = 16, device: str | None = None, workers: int = 2, save_dir: Path | None = None,
                   warmup: int = DEFAULT_WARMUP, runs: int = DEFAULT_RUNS, threads: int | None = None,
                   seeds: int = 1, plots: bool = False, progress: bool = True) -> list[ModelResult]:
    """Measure every model in ``models`` (see the module docstring); returns one row per model.

    All models are built first, then timed together (interleaved), then trained one after another, each
    with seeds 0 .. ``seeds`` - 1. Raises ``DatasetError`` before any work when ``data`` is broken.
    """
    import torch
    from ultralytics.utils import TQDM

    # images are decoded by run()'s full check (and the check command); here the layout and labels suffice
    summary = check_dataset(data, verify_images=False) if data else None
    nc = summary.nc if summary else None
    save_dir = Path(save_dir or "runs/compare")
    results = [ModelResult(model=str(name)) for name in models]
    built = {}  # row index -> YOLO object (the same model may be listed twice)
    for i, row in enumerate(results):
        try:
            built[i] = build_model(row.model, nc=nc)
            row.params, row.gflops = model_size(built[i].model, imgsz)
        except Exception as e:  # one broken model must not lose the others' results
            row.error = one_line(e)
    write_layer_tables(results, built, imgsz, save_dir)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        runners = {}
        for i, row in enumerate(results):
            if not row.error:
                try:
                    runners[i] = torch_runner(built[i].model, imgsz, device=dev)
                except Exception as e:
                    row.error = one_line(e)
        stats = measure_latency(runners, warmup=warmup, runs=runs, threads=threads)
        for i, row in enumerate(results):
            if i in stats:
                setattr(row, "cpu" if dev == "cpu" else "gpu", stats[i])
                row.error = row.error or stats[i].error

    if summary:
        train_device = device if device is not None else ("0" if torch.cuda.is_available() else "cpu")
        jobs = [(i, row, seed) for i, row in enumerate(results) if not row.error for seed in range(seeds)]
        bar = TQDM(jobs, desc=COMMAND, unit="run", disable=not progress)
        for index, row, seed in bar:
            stem = Path(row.model).stem
            bar.set_description(f"{COMMAND} {stem} seed {seed}")
            # training replaces the YOLO object's model, so every seed after the first starts from a fresh build
            yolo = built.pop(index, None) or build_model(row.model, nc=nc)
            run_name = f"{index + 1}-{stem}" + (f"-seed{seed}" if seeds > 1 else "")
            try:
                map50, map50_95 = train_and_validate(
                    yolo, summary.yaml_file, save_dir, run_name, epochs=epochs, imgsz=imgsz, batch=batch,
                    device=train_device, workers=workers, plots=plots, seed=seed)
                row.runs.append(TrainRun(seed, map50, map50_95))
            except Exception as e:
                row.error = f"seed {seed}: {one_line(e)}"
    return results


def write_layer_tables(results: list[ModelResult], built: dict, imgsz: int, save_dir: Path) -> None:
    """layers-<model>.md and .csv (per-layer parameters and GFLOPs) for every model that was built."""
    from .layers import layer_costs, write_layer_files

    save_dir.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(results):
        if index in built:
            try:
                costs = layer_costs(built[index].model, imgsz, totals=(int(row.params), row.gflops))
                write_layer_files(costs, save_dir / f"layers-{index + 1}-{Path(row.model).stem}", row.model)
            except Exception as e:  # the per-layer view is extra: it must not fail the comparison
                row.error = row.error or f"layers: {one_line(e)}"


# --- spread and marks ----------------------------------------------------------------------------------
def within_spread(a: ModelResult, b: ModelResult, key: str) -> bool:
    """Whether the difference of the mean ``key`` of a and b is at most the spread of that difference.

    The spread is sqrt(std_a^2 + std_b^2), the standard deviation of the difference between one run of each;
    False when either model has fewer than two runs (no spread is known).
    """
    sa, sb = a.std(key), b.std(key)
    if math.isnan(sa) or math.isnan(sb):
        return False
    return abs(a.mean(key) - b.mean(key)) <= math.hypot(sa, sb)


def best_model(results: list[ModelResult], key: str) -> ModelResult | None:
    trained = [r for r in results if r.runs]
    return max(trained, key=lambda r: r.mean(key)) if trained else None


# --- output files --------------------------------------------------------------------------------------
def _fmt(value: float, digits: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def csv_row(r: ModelResult) -> dict[str, object]:
    cpu, gpu = r.cpu, r.gpu
    values = {
        "model": r.model, "params": "" if math.isnan(r.params) else int(r.params),
        "gflops": "" if math.isnan(r.gflops) else repr(r.gflops),  # full precision: equal to model.info()
        "cpu_ms": _fmt(cpu.median_ms, 3) if cpu else "", "cpu_q1_ms": _fmt(cpu.q1_ms, 3) if cpu else "",
        "cpu_q3_ms": _fmt(cpu.q3_ms, 3) if cpu else "", "cpu_outliers": len(cpu.outliers) if cpu and cpu.n else "",
        "fps": _fmt(cpu.fps, 2) if cpu else "", "gpu_ms": _fmt(gpu.median_ms, 3) if gpu else "",
        "gpu_q1_ms": _fmt(gpu.q1_ms, 3) if gpu else "", "gpu_q3_ms": _fmt(gpu.q3_ms, 3) if gpu else "",
        "map50": _fmt(r.mean("map50"), 6), "map50_std": _fmt(r.std("map50"), 6),
        "map50_95": _fmt(r.mean("map50_95"), 6), "map50_95_std": _fmt(r.std("map50_95"), 6),
        "seeds": len(r.runs) if r.runs else "", "error": r.error,
    }
    return {k: values[k] for k in CSV_COLUMNS}


def write_csv(results: list[ModelResult], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for r in results:
            writer.writerow(csv_row(r))


def write_runs_csv(results: list[ModelResult], path: Path) -> None:
    """One row per training run: model, seed, mAP50, mAP50-95."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "seed", "map50", "map50_95"])
        for r in results:
            for run in r.runs:
                writer.writerow([r.model, run.seed, f"{run.map50:.6f}", f"{run.map50_95:.6f}"])


def map_cell(r: ModelResult, key: str, best: ModelResult | None) -> str:
    """``"0.512 ± 0.013"`` (mean ± std over seeds); bold for the best model, ``≈`` when within the spread of it."""
    if not r.runs:
        return ""
    text = f"{r.mean(key):.3f}"
    if len(r.runs) > 1:
        text += f" ± {r.std(key):.3f}"
    if best is not None and len(best.runs) > 1:
        if r is best:
            text = f"**{text}**"
        elif within_spread(r, best, key):
            text += " ≈"
    return text


def markdown_table(results: list[ModelResult], imgsz: int, with_map: bool) -> str:
    """The comparison table in Markdown (also readable on a terminal)."""
    header = ["Model", "Params (M)", f"GFLOPs@{imgsz}", f"CPU ms@{imgsz} (median, IQR)", "FPS"]
    with_gpu = any(r.gpu is not None and r.gpu.n for r in results)
    if with_gpu:
        header.append(f"GPU ms@{imgsz} (median, IQR)")
    bests = {}
    if with_map:
        header += ["mAP50", "mAP50-95"]
        bests = {key: best_model(results, key) for key in ("map50", "map50_95")}
    with_error = any(r.error for r in results)
    if with_error:
        header.append("Error")
    align = ["---"] + ["---:"] * (len(header) - 1)
    if with_error:
        align[-1] = "---"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in results:
        cells = [r.model, _fmt(r.params / 1e6, 3), _fmt(r.gflops, 2), r.cpu.cell() if r.cpu else "",
                 _fmt(r.cpu.fps, 1) if r.cpu else ""]
        if with_gpu:
            cells.append(r.gpu.cell(2) if r.gpu else "")
        if with_map:
            cells += [map_cell(r, "map50", bests["map50"]), map_cell(r, "map50_95", bests["map50_95"])]
        if with_error:
            cells.append(r.error)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def notes(results: list[ModelResult], imgsz: int, warmup: int, runs: int, threads: int | None, seeds: int,
          with_map: bool) -> str:
    """What the numbers mean: the latency protocol(s) and, with training, the seeds and the marks."""
    threads = threads or default_threads()
    lines = [protocol(warmup, runs, threads, torch_runtime("cpu"), imgsz)]
    if any(r.gpu is not None and r.gpu.n for r in results):
        lines.append("GPU: " + protocol(warmup, runs, threads, torch_runtime("cuda"), imgsz))
    for device in ("cpu", "gpu"):
        warning = spread_warning({r.model: getattr(r, device) for r in results if getattr(r, device) is not None})
        if warning:
            lines.append(f"{device.upper()} {warning}")
    if with_map:
        if seeds > 1:
            lines.append(f"Accuracy: each model trained {seeds} times (seeds 0-{seeds - 1}), same settings; "
                         "mean ± sample standard deviation. Bold: best mean; ≈: its difference from the best is "
                         "smaller than the run-to-run spread, sqrt(std_a² + std_b²), so this table cannot tell "
                         "the two apart.")
        else:
            lines.append("Accuracy: one training run per model (seed 0): no spread is known; use --seeds 3 "
                         "before reading small differences.")
    return "\n\n".join(lines) + "\n"


# --- plot ----------------------------------------------------------------------------------------------
def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize: float = 8,
                 avoid: list[tuple[float, float, float, float]] = ()) -> list:
    """Write ``labels`` next to ``points`` (data coordinates) so that no two labels overlap and no label
    covers a point, the legend or a rectangle of ``avoid`` (x0, y0, x1, y1 in data coordinates, e.g. error
    bars); returns the matplotlib Text objects.

    Greedy: each label tries positions on rings of growing radius around its point (right, above, left,
    below, then the diagonals) and takes the first whose box is free and inside the figure; a label placed
    away from its point gets a thin leader line.
    """
    from matplotlib.text import Text

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig_box = fig.bbox
    marker_r = 5.0  # pixels around each point that labels keep clear of
    obstacles = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        obstacles.append((px - marker_r, py - marker_r, px + marker_r, py + marker_r))
    for x0, y0, x1, y1 in avoid:
        (ax0, ay0), (ax1, ay1) = ax.transData.transform((x0, y0)), ax.transData.transform((x1, y1))
        obstacles.append((min(ax0, ax1) - 2, min(ay0, ay1) - 2, max(ax0, ax1) + 2, max(ay0, ay1) + 2))
    if ax.get_legend() is not None:
        legend = ax.get_legend().get_window_extent(renderer)
        obstacles.append((legend.x0, legend.y0, legend.x1, legend.y1))
    directions = [(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (-1, -1), (1, -1)]
    placed = []
    for (x, y), label in sorted(zip(points, labels), key=lambda item: (-item[0][1], item[0][0])):
        text = None
        for radius in [6 + 10 * k for k in range(40)]:
            for dx, dy in directions:
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                arrow = {"arrowstyle": "-", "color": "0.5", "lw": 0.6} if radius > 16 else None
                candidate = ax.annotate(label, (x, y), xytext=(dx * radius, dy * radius), textcoords="offset points",
                                        ha=ha, va=va, fontsize=fontsize, arrowprops=arrow, zorder=4)
                box = Text.get_window_extent(candidate, renderer)  # the text alone, not its leader line
                rect = (box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)
                inside = (rect[0] >= fig_box.x0 and rect[1] >= fig_box.y0 and rect[2] <= fig_box.x1
                          and rect[3] <= fig_box.y1)
                if inside and not any(_overlap(rect, o) for o in obstacles):
                    text = candidate
                    obstacles.append(rect)
                    break
                candidate.remove()
            if text is not None:
                break
        if text is None:  # nowhere free inside the figure (hundreds of labels): keep the point, drop the label
            continue
        placed.append(text)
    return placed


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


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
    """Write the Pareto plot of ``figure()`` to ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(results, imgsz, with_map)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(results: list[ModelResult], imgsz: int, with_map: bool):
    """Pareto plot: mAP50-95 vs CPU latency (with training) or params / GFLOPs vs CPU latency.

    Latency points carry their interquartile range as horizontal bars; with several seeds, the mean carries
    its standard deviation as vertical bars and every run is a small grey dot.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display; matplotlib's bundled DejaVu font, nothing downloaded
    import matplotlib.pyplot as plt

    ok = [r for r in results if not r.error and r.cpu is not None and r.cpu.n]
    if with_map:
        panels = [("map50_95", "mAP50-95", True)]
    else:
        panels = [("params", "Parameters (M)", False), ("gflops", f"GFLOPs @ {imgsz}", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    axis_labels = []
    for ax, (key, label, higher_is_better) in zip(axes[0], panels):
        if key == "map50_95":
            rows = [r for r in ok if r.runs]
            ys = [r.mean(key) for r in rows]
            yerr = [0.0 if math.isnan(r.std(key)) else r.std(key) for r in rows]
            for r in rows:
                if len(r.runs) > 1:
                    ax.scatter([r.cpu_ms] * len(r.runs), r.metric(key), s=10, color="tab:gray", alpha=0.7,
                               zorder=3, label="one training run" if r is rows[0] else None, gid="training runs")
        else:
            rows = ok
            scale = 1e-6 if key == "params" else 1.0
            ys = [getattr(r, key) * scale for r in rows]
            yerr = [0.0] * len(rows)
        xs = [r.cpu_ms for r in rows]
        xerr = [[r.cpu.median_ms - r.cpu.q1_ms for r in rows], [r.cpu.q3_ms - r.cpu.median_ms for r in rows]]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", color="tab:blue", ecolor="tab:blue", elinewidth=1,
                    capsize=3, zorder=3)
        if rows:
            # "better" is up (accuracy) or down (size); flip y so the same front code serves both
            signed = [(x, y if higher_is_better else -y) for x, y in zip(xs, ys)]
            front = pareto_front(signed)
            ax.plot([xs[i] for i in front], [ys[i] for i in front], "--o", color="tab:orange",
                    markerfacecolor="none", markersize=11, label="Pareto front", zorder=2)
            ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.25, y=0.2)  # room for the labels of the outermost points
        ax.set_xlabel(f"CPU latency (ms, median and IQR, batch 1, {imgsz}x{imgsz})")
        ax.set_ylabel(label + (" (mean ± std over seeds)" if key == "map50_95" else ""))
        ax.grid(alpha=0.3)
        bars = [(r.cpu.q1_ms, y, r.cpu.q3_ms, y) for r, y in zip(rows, ys)]  # latency IQR bars
        bars += [(x, y - e, x, y + e) for x, y, e in zip(xs, ys, yerr) if e > 0]  # seed std bars
        axis_labels.append((ax, list(zip(xs, ys)), [Path(r.model).stem for r in rows], bars))
    fig.suptitle("Model comparison" + (" (failed models not shown)" if len(ok) < len(results) else ""))
    fig.tight_layout()
    for ax, points, labels, bars in axis_labels:  # after the layout, so label boxes are measured where they end up
        place_labels(ax, points, labels, avoid=bars)
    return fig


def write_outputs(results: list[ModelResult], save_dir: Path, imgsz: int, with_map: bool, table_notes: str = ""
                  ) -> dict[str, Path]:
    paths = {"csv": save_dir / "compare.csv", "md": save_dir / "compare.md", "png": save_dir / "compare.png"}
    write_csv(results, paths["csv"])
    if with_map:
        paths["runs"] = save_dir / "runs.csv"
        write_runs_csv(results, paths["runs"])
    text = markdown_table(results, imgsz, with_map) + ("\n" + table_notes if table_notes else "")
    paths["md"].write_text(text, encoding="utf-8")
    plot(results, paths["png"], imgsz, with_map)
    return paths


# --- command line --------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m ultralytics_addmodules compare")
    p.description = ("对比多个模型：参数量、GFLOPs、延迟（中位数与四分位距）、FPS，加 --data 时训练并给出 mAP。 | "
                     "Compare models: params, GFLOPs, latency (median and IQR), FPS and, with --data, mAP.")
    p.add_argument("models", nargs="+", help="模型 YAML 或 .pt | model YAMLs (bare names from yaml/ work) or .pt files")
    p.add_argument("--data", help="数据集 YAML：在其上训练并验证每个模型 | data YAML: train and validate every model on it")
    p.add_argument("--epochs", type=int, default=10, help="每次训练的轮数 | training epochs per run (default 10)")
    p.add_argument("--seeds", type=int, default=1,
                   help="每个模型用种子 0..N-1 各训练一次，报告均值±标准差 | train each model with seeds 0..N-1 "
                        "and report mean ± std (default 1)")
    p.add_argument("--imgsz", type=int, default=640, help="GFLOPs、延迟和训练的图像尺寸 | image size for GFLOPs, "
                                                          "latency and training (default 640)")
    p.add_argument("--batch", type=int, default=16, help="训练批大小 | training batch size (default 16)")
    p.add_argument("--device", default=None, help="训练设备 cpu、0… | training device: cpu, 0, ... "
                                                  "(default: GPU 0 if present)")
    p.add_argument("--workers", type=int, default=2, help="数据加载进程数 | data-loading workers for training")
    p.add_argument("--project", default="runs/compare", help="运行目录的上级目录 | parent folder of the run folder")
    p.add_argument("--name", default=None, help="运行目录名（默认：下一个编号） | run folder name (default: next number)")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                   help=f"每个模型计时的前向次数 | timed forward passes per model (default {DEFAULT_RUNS})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help=f"计时前的预热轮数 | untimed warm-up rounds (default {DEFAULT_WARMUP})")
    p.add_argument("--threads", type=int, default=None,
                   help=f"计时用的 CPU 线程数（固定） | fixed CPU threads for timing (default {default_threads()})")
    p.add_argument("--plots", action="store_true", help="同时保存 Ultralytics 训练图 | also write Ultralytics' "
                                                       "training plots per run")
    return p


def check_args(args: argparse.Namespace) -> int:
    """0 when the arguments are usable, else the exit code after one bilingual error line."""
    for flag, value, minimum in (("--epochs", args.epochs, 1), ("--imgsz", args.imgsz, 32), ("--batch", args.batch, 1),
                                 ("--runs", args.runs, 1), ("--warmup", args.warmup, 0), ("--seeds", args.seeds, 1),
                                 ("--threads", args.threads, 1), ("--workers", args.workers, 0)):
        if value is not None and value < minimum:
            return fail(COMMAND, f"{flag} 必须 ≥ {minimum}，收到 {value}", f"{flag} must be >= {minimum}, got {value}")
    if args.seeds > 1 and not args.data:
        return fail(COMMAND, f"--seeds {args.seeds} 需要 --data（种子只影响训练）",
                    f"--seeds {args.seeds} needs --data (seeds only change training)")
    if args.data:
        try:
            check_dataset(args.data)
        except DatasetError as e:  # the first problem, in each language (``check`` lists them all)
            first = e.problems[0] if getattr(e, "problems", None) else None
            if first is None or not hasattr(first, "zh"):
                return fail(COMMAND, f"数据集有问题：{e}", f"dataset problem: {e}")
            where = f"{first.where}: " if first.where else ""
            more = len(e.problems) - 1
            zh_more = f"（另有 {more} 个问题，用 check 命令查看）" if more else ""
            en_more = f" ({more} more; run the check command)" if more else ""
            return fail(COMMAND, f"数据集有问题：{where}{first.zh}{zh_more}", f"dataset problem: {where}{first.en}{en_more}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ``compare`` subcommand from parsed arguments; returns the process exit code."""
    import sys

    code = check_args(args)
    if code:
        return code
    save_dir = new_run_dir(Path(args.project), args.name)
    results = compare_models(args.models, data=args.data, epochs=args.epochs, imgsz=args.imgsz,
                             batch=args.batch, device=args.device, workers=args.workers, save_dir=save_dir,
                             warmup=args.warmup, runs=args.runs, threads=args.threads, seeds=args.seeds,
                             plots=args.plots)
    text_notes = notes(results, args.imgsz, args.warmup, args.runs, args.threads, args.seeds, bool(args.data))
    paths = write_outputs(results, save_dir, args.imgsz, with_map=bool(args.data), table_notes=text_notes)
    print()
    print(paths["md"].read_text(encoding="utf-8"), end="")
    files = ", ".join(p.name for p in paths.values())
    print(f"\n结果已保存到 {save_dir} | results saved to {save_dir} ({files}, layers-*.md)")
    failed = [r.model for r in results if r.error]
    if failed:
        print(f"{len(failed)} of {len(results)} models failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if len(failed) == len(results) else 0
