"""Benchmark stock YOLO11 against the shipped model YAMLs on this machine's CPU.

    python benchmarks/run.py                          # stock YOLO11n/s and every shipped YAML at n and s
    python benchmarks/run.py --imgsz 320 --train-imgsz 160 --epochs 1
    python benchmarks/run.py --quick --models yolo11n.yaml yolo11n-MobileNetV4.yaml   # seconds, for CI

For every model: parameters and GFLOPs (as ``model.info()`` reports them, GFLOPs at --imgsz), CPU latency
at --imgsz, batch 1, of the fused PyTorch model and of its ONNX export in ONNX Runtime, then training
throughput (images/s over the training epochs, validation excluded) and peak resident memory of a training
run on the bundled dataset (dataset/data.yaml; a generated tiny dataset when it is missing, which the
output says).

Fairness: latencies of all models are measured in ONE process, interleaved (one forward of each model in
turn, repeated), with a fixed thread count, and reported as medians, so background load hits every model
alike. Training runs in a separate process per model, so one model's memory cannot inflate another's
peak RSS. Ratio columns (x) divide by stock YOLO11 of the same scale (n, s, ...), measured in this run;
stock models are added automatically when missing from --models.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO / "dataset" / "data.yaml"
os.environ.setdefault("YOLO_OFFLINE", "true")  # never probe the network (set before Ultralytics is imported)
os.environ.setdefault("YOLO_VERBOSE", "false")


def default_models(scales=("n", "s")) -> list[str]:
    """Stock YOLO11 and every shipped YAML, at each scale."""
    sys.path.insert(0, str(REPO))
    from ultralytics_addmodules.model_yamls import list_model_yamls

    names = ["yolo11.yaml"] + [p.name for p in list_model_yamls("detect")]  # trained on a detection set
    return [scaled(n, s) for s in scales for n in names]


def scaled(name: str, scale: str) -> str:
    """'yolo11-X.yaml' + 's' -> 'yolo11s-X.yaml'."""
    return re.sub(r"^(yolo(?:v)?\d+)", rf"\g<1>{scale}", name, count=1)


def scale_of(name: str) -> str | None:
    m = re.match(r"^yolo(?:v)?\d+([nsmlx])(?=[-.])", Path(name).name)
    return m.group(1) if m else None


def stock_for(name: str) -> str | None:
    scale = scale_of(name)
    return f"yolo11{scale}.yaml" if scale else None


# --- latency (all models in this process, interleaved) -------------------------------------------------------
def measure_latency(names: list[str], imgsz: int, threads: int, warmup: int, repeats: int, workdir: Path) -> dict:
    import onnxruntime as ort
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    torch.set_num_threads(threads)
    runners, info = {}, {}
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    for name in names:
        try:
            yolo = YOLO(name)
            info[name] = {"params": get_num_params(yolo.model), "gflops": get_flops(yolo.model, imgsz)}
            fused = copy.deepcopy(yolo.model).float().eval().fuse(verbose=False)
            cwd = os.getcwd()
            os.chdir(workdir)  # Ultralytics writes the export next to the model name, i.e. into the cwd
            try:
                onnx_file = yolo.export(format="onnx", imgsz=imgsz, simplify=False)
            finally:
                os.chdir(cwd)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(workdir / onnx_file), options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            runners[(name, "pt_ms")] = lambda m=fused: m(x)
            runners[(name, "ort_ms")] = lambda s=session, f=feed: s.run(None, f)
        except Exception as e:  # one broken model must not lose the others' numbers
            info[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    times = {key: [] for key in runners}
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runners.values():
                run()
        for _ in range(repeats):
            for key, run in runners.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
    for (name, column), values in times.items():
        info[name][column] = 1000 * statistics.median(values)
    return info


# --- training (one process per model) ------------------------------------------------------------------------
def train_child(args) -> None:
    """Entry point of the per-model training process: prints one JSON line with its measurements."""
    from ultralytics import YOLO

    epoch_times, images = [], []
    start = {}

    def on_train_epoch_start(trainer):
        start["t"] = time.perf_counter()

    def on_train_epoch_end(trainer):
        epoch_times.append(time.perf_counter() - start["t"])
        images.append(len(trainer.train_loader.dataset))

    yolo = YOLO(args.child)
    yolo.add_callback("on_train_epoch_start", on_train_epoch_start)
    yolo.add_callback("on_train_epoch_end", on_train_epoch_end)
    import torch

    torch.set_num_threads(args.threads)
    yolo.train(data=args.data, epochs=args.epochs, imgsz=args.train_imgsz, batch=args.batch, workers=0,
               device="cpu", plots=False, amp=False, val=False, seed=0, fraction=args.fraction,
               project=args.project, name=re.sub(r"\W", "_", args.child), exist_ok=True, verbose=False)
    print("BENCH " + json.dumps({"train_img_s": sum(images) / sum(epoch_times), "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (exec).

    Linux's VmHWM belongs to the process image, so it starts afresh at exec; ``ru_maxrss`` would carry
    over the parent's peak (the benchmark parent holds every model), hiding the model's own peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def measure_training(name: str, args, data: str, project: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--data", data, "--project", str(project),
           "--epochs", str(args.epochs), "--train-imgsz", str(args.train_imgsz), "--batch", str(args.batch),
           "--threads", str(args.threads), "--fraction", str(args.fraction)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    for line in r.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"training failed: {tail}"}


# --- dataset and report ---------------------------------------------------------------------------------------
def dataset(tmp: Path) -> tuple[str, str]:
    """(data YAML, description). The bundled dataset, else a generated tiny one."""
    if BUNDLED_DATA.is_file():
        return str(BUNDLED_DATA), f"bundled dataset {BUNDLED_DATA.relative_to(REPO)}"
    sys.path.insert(0, str(REPO / "scripts"))
    from make_dataset import make_dataset

    data = make_dataset(tmp / "tiny_dataset", n_train=16, n_val=8, size=96)
    return str(data), ("WARNING: dataset/data.yaml is missing; used a GENERATED tiny dataset (16 train images), "
                       "so training numbers are not comparable to the bundled one")


COLUMNS = [  # (key, header, format, ratio header or None)
    ("params", "Params (M)", lambda v: f"{v / 1e6:.2f}", "Params x"),
    ("gflops", "GFLOPs", lambda v: f"{v:.2f}", "GFLOPs x"),
    ("pt_ms", "PyTorch fused ms", lambda v: f"{v:.1f}", "PyTorch x"),
    ("ort_ms", "ONNX Runtime ms", lambda v: f"{v:.1f}", "ORT x"),
    ("train_img_s", "Train img/s", lambda v: f"{v:.1f}", "img/s x"),
    ("peak_rss_mb", "Peak RSS (MB)", lambda v: f"{v:.0f}", "RSS x"),
]


def table(results: dict) -> str:
    header = ["Model"]
    for _, title, _, ratio in COLUMNS:
        header += [title, ratio]
    header.append("Error")
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    for name, row in results.items():
        base = results.get(stock_for(name) or "", {})
        cells = [name]
        for key, _, fmt, _ in COLUMNS:
            value = row.get(key)
            cells.append(fmt(value) if value is not None else "")
            ref = base.get(key)
            cells.append(f"{value / ref:.2f}" if value is not None and ref else "")
        cells.append(row.get("error", "").replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(threads: int) -> str:
    import onnxruntime
    import torch
    import ultralytics

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {threads} threads; Python {platform.python_version()}, "
            f"torch {torch.__version__}, ultralytics {ultralytics.__version__}, onnxruntime {onnxruntime.__version__}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", help="model YAMLs (default: stock YOLO11 + every shipped YAML at n, s)")
    ap.add_argument("--imgsz", type=int, help="latency / GFLOPs image size (default 320; 64 with --quick)")
    ap.add_argument("--train-imgsz", type=int, help="training image size (default: --imgsz)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs per model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="CPU threads (fixed)")
    ap.add_argument("--repeats", type=int, help="timed forward passes per model (default 20; 3 with --quick)")
    ap.add_argument("--fraction", type=float, help="fraction of the training set (default 1.0; 0.1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny settings that finish in seconds per model (CI)")
    ap.add_argument("--data", help="data YAML (default: the bundled dataset)")
    ap.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.imgsz = args.imgsz or (64 if args.quick else 320)
    args.train_imgsz = args.train_imgsz or args.imgsz
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.fraction = args.fraction or (0.1 if args.quick else 1.0)
    if args.quick:
        args.batch = min(args.batch, 8)
    if args.child:
        train_child(args)
        return 0

    sys.path.insert(0, str(REPO))
    import ultralytics_addmodules  # noqa: F401  (activates, also when run from a checkout)

    models = list(dict.fromkeys(args.models or default_models()))
    stock = [s for s in dict.fromkeys(stock_for(m) for m in models) if s and s not in models]
    models = stock + models
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, data_note = (args.data, f"dataset {args.data}") if args.data else dataset(tmp)
        started = time.time()
        results = measure_latency(models, args.imgsz, args.threads, warmup=2 if args.quick else 5,
                                  repeats=args.repeats, workdir=tmp)
        for name in models:
            if "error" not in results[name]:
                results[name].update(measure_training(name, args, data, tmp / "runs"))
        minutes = (time.time() - started) / 60
    report = "\n".join([
        f"Machine: {machine(args.threads)}",
        f"Latency: batch 1, {args.imgsz}x{args.imgsz}, median of {args.repeats} interleaved runs. "
        f"Training: {args.epochs} epoch(s) at {args.train_imgsz}, batch {args.batch}, workers 0, "
        f"fraction {args.fraction}, {data_note}. Ratios (x) vs stock YOLO11 of the same scale. "
        f"Took {minutes:.1f} min.",
        "",
        table(results),
        "",
    ])
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
