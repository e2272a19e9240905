"""Deployment benchmark: every shipped YAML against stock YOLO11 on the runtimes users deploy to.

    python benchmarks/run.py                                   # the table in docs/benchmarks.md
    python benchmarks/run.py --quick                           # seconds per model, for CI
    python benchmarks/run.py --models yolo11n.yaml yolo11n-MobileNetV4.yaml --imgsz 320 --no-accuracy

Latency (``--imgsz``, default 320 and 640): for every model, batch 1, the fused PyTorch model, its ONNX export
in ONNX Runtime (fp32, and INT8 after static quantisation, ``export.quantize_onnx_int8``), and its OpenVINO
export (fp32 ``format=openvino`` and INT8 ``format=openvino int8=True``, NNCF calibration), as users export
them. All candidates of one image size run in ONE process, interleaved in rotating order, with a fixed thread
count (``ultralytics_addmodules.measure``): median and IQR. Ratio columns divide by stock YOLO11 of the same
scale in the same runtime, measured in the same run. Runtimes that are not installed are left out and named.

Accuracy (n-scale models, unless ``--no-accuracy``): each model is trained from scratch on the bundled dataset
(``--epochs``, at ``--acc-imgsz``; cached in ``--weights-dir`` so a rerun skips training), exported and
quantised the same way (INT8 calibrated on the bundled validation images), and every variant is validated on
a GENERATED validation set of ``--val-images`` images drawn like the bundled ones but never seen in training.
The noise of mAP50-95 on that set is estimated for every PyTorch model as half the difference between its
two halves (split-half); the difference between two variants of the same model is paired and smaller.

``--training`` adds training throughput and peak RSS per model (separate processes), as before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO / "dataset" / "data.yaml"
os.environ.setdefault("YOLO_OFFLINE", "true")  # never probe the network (set before Ultralytics is imported)
os.environ.setdefault("YOLO_VERBOSE", "false")
# Runtimes timed interleaved must not keep the cores busy between their runs: PyTorch's OpenMP threads spin
# after each parallel region unless told to sleep (set before torch is imported; ONNX Runtime's spinning is
# switched off in runtimes.py). Each runtime pays a thread wake-up per run instead, as in an application that
# does other work between frames.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(REPO))

RUNTIMES = {  # key -> (column title, what it needs installed)
    "pytorch": ("PyTorch fused", None),
    "ort": ("ONNX Runtime fp32", "onnxruntime"),
    "openvino": ("OpenVINO fp32", "openvino"),
    "ort_int8": ("ONNX Runtime INT8", "onnxruntime"),
    "openvino_int8": ("OpenVINO INT8 (NNCF)", "nncf"),
}


def default_models(scales=("n", "s")) -> list[str]:
    """Stock YOLO11 and every shipped detection YAML, at each scale."""
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


def installed(module: str | None) -> bool:
    import importlib.util

    return module is None or importlib.util.find_spec(module) is not None


# --- calibration images ----------------------------------------------------------------------------------------
def calibration_images(data_yaml: str, imgsz: int, n: int) -> list:
    """Up to ``n`` validation images of ``data_yaml``, letterboxed to imgsz x imgsz, float32 NCHW in [0, 1]."""
    import numpy as np
    from ultralytics.data.augment import LetterBox
    from ultralytics.data.utils import check_det_dataset

    import cv2

    data = check_det_dataset(data_yaml)
    folder = Path(data["val"])
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})[:n]
    letterbox = LetterBox((imgsz, imgsz), auto=False)
    images = []
    for f in files:
        im = letterbox(image=cv2.imread(str(f)))[..., ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW
        images.append(np.ascontiguousarray(im[None], dtype=np.float32) / 255.0)
    return images


# --- exports ---------------------------------------------------------------------------------------------------
def export_variants(yolo, name: str, imgsz: int, runtimes: list[str], calib_data: str, folder: Path,
                    calib: list) -> dict:
    """Export ``yolo`` for every requested runtime; returns {runtime: path or Exception}."""
    from ultralytics_addmodules.deploy import working_directory
    from ultralytics_addmodules.export import quantize_onnx_int8

    out = {}
    stem = Path(name).stem
    with working_directory(folder / f"{stem}_{imgsz}"):
        onnx_file = None
        for rt in runtimes:
            try:
                if rt in ("ort", "ort_int8") and onnx_file is None:
                    onnx_file = Path(yolo.export(format="onnx", imgsz=imgsz)).resolve()
                if rt == "ort":
                    out[rt] = onnx_file
                elif rt == "ort_int8":
                    out[rt] = quantize_onnx_int8(onnx_file, calib, onnx_file.with_name(f"{stem}_int8.onnx")).resolve()
                elif rt == "openvino":
                    out[rt] = Path(yolo.export(format="openvino", imgsz=imgsz)).resolve()
                elif rt == "openvino_int8":
                    out[rt] = Path(yolo.export(format="openvino", imgsz=imgsz, int8=True, data=calib_data)).resolve()
            except Exception as e:  # one failing export must not lose the other numbers
                out[rt] = e
    return out


def runner_for(rt: str, path: Path, threads: int):
    from ultralytics_addmodules.runtimes import load_runtime

    return load_runtime("openvino" if rt.startswith("openvino") else "onnx", path, threads)


# --- latency ---------------------------------------------------------------------------------------------------
def measure_latency_table(models: list[str], imgsz: int, runtimes: list[str], threads: int, warmup: int,
                          runs: int, calib_data: str, workdir: Path, weights: dict) -> dict:
    """{(model, runtime): LatencyStats or error text} for one image size, all candidates interleaved."""
    import numpy as np
    from ultralytics import YOLO

    from ultralytics_addmodules.measure import measure_latency, one_line, torch_runner

    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    calib = calibration_images(calib_data, imgsz, 16) if any(r.endswith("int8") for r in runtimes) else []
    candidates, errors = {}, {}
    for name in models:
        print(f"  {imgsz}: exporting {name} ...", flush=True)
        try:
            yolo = YOLO(weights.get(name, name))
        except Exception as e:
            errors.update({(name, rt): one_line(e) for rt in runtimes})
            continue
        if "pytorch" in runtimes:
            candidates[(name, "pytorch")] = torch_runner(yolo.model, imgsz)
        exported = export_variants(yolo, name, imgsz, [r for r in runtimes if r != "pytorch"], calib_data,
                                   workdir, calib)
        for rt, path in exported.items():
            if isinstance(path, Exception):
                errors[(name, rt)] = one_line(path)
                continue
            try:
                run = runner_for(rt, path, threads)
                candidates[(name, rt)] = lambda run=run: run(x)
            except Exception as e:
                errors[(name, rt)] = one_line(e)
    print(f"  {imgsz}: timing {len(candidates)} candidates interleaved ...", flush=True)
    stats = measure_latency(candidates, warmup=warmup, runs=runs, threads=threads)
    return {**errors, **stats}


# --- accuracy --------------------------------------------------------------------------------------------------
def trained_weights(name: str, epochs: int, imgsz: int, weights_dir: Path, threads: int) -> Path:
    """A checkpoint of ``name`` trained from scratch on the bundled dataset (cached in ``weights_dir``)."""
    target = weights_dir / f"{Path(name).stem}_e{epochs}_{imgsz}.pt"
    if target.is_file():
        return target
    weights_dir.mkdir(parents=True, exist_ok=True)
    code = (f"import torch, ultralytics_addmodules\nfrom ultralytics import YOLO\ntorch.set_num_threads({threads})\n"
            f"r = YOLO({name!r}).train(data={str(BUNDLED_DATA)!r}, epochs={epochs}, imgsz={imgsz}, batch=16, "
            f"workers=0, device='cpu', plots=False, val=False, seed=0, amp=False, project={str(weights_dir)!r}, "
            f"name='train_{Path(name).stem}', exist_ok=True, verbose=False)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                   capture_output=True)
    shutil.copy2(weights_dir / f"train_{Path(name).stem}" / "weights" / "last.pt", target)
    return target


def make_validation_set(root: Path, n: int) -> Path:
    """A validation set drawn like the bundled one (same generator, another seed), never seen in training."""
    sys.path.insert(0, str(REPO / "scripts"))
    from make_dataset import make_dataset

    return make_dataset(root, n_train=1, n_val=n, seed=12345)


def split_halves(data_yaml: Path) -> tuple[Path, Path]:
    """Two data YAMLs, each validating on one half of ``data_yaml``'s validation images."""
    root = data_yaml.parent
    files = sorted((root / "val" / "images").glob("*.jpg"))
    halves = []
    for k, part in enumerate((files[0::2], files[1::2])):
        listing = root / f"half{k}.txt"
        listing.write_text("\n".join(str(f) for f in part) + "\n")
        yaml = root / f"half{k}.yaml"
        yaml.write_text(data_yaml.read_text().replace("val: val/images", f"val: {listing}"))
        halves.append(yaml)
    return halves[0], halves[1]


def map50_95(model_path, data: Path, imgsz: int) -> float:
    """mAP50-95 with the same square letterbox for every variant.

    Ultralytics validates a .pt with rect batches, which pad each side to a stride multiple plus half a stride
    (a 160 px image becomes 192 px), but a static-shape export with the plain imgsz square. Left at the default,
    the PyTorch column saw other inputs than the exports: measured on the trained yolo11n-MobileNetV4, 0.198 with
    rect against 0.185 without, exactly its ONNX export's 0.185, a gap once mistaken for an export error.
    """
    from ultralytics import YOLO

    metrics = YOLO(str(model_path), task="detect").val(data=str(data), imgsz=imgsz, batch=1, device="cpu",
                                                        rect=False, plots=False, verbose=False, workers=0)
    return float(metrics.box.map)


def measure_accuracy(models: list[str], runtimes: list[str], imgsz: int, weights: dict, val_data: Path,
                     workdir: Path) -> dict:
    """{(model, runtime): mAP50-95 or error text}, plus {(model, 'noise'): split-half noise of PyTorch}."""
    from ultralytics import YOLO

    from ultralytics_addmodules.measure import one_line

    calib = calibration_images(str(BUNDLED_DATA), imgsz, 40)
    halves = split_halves(val_data)
    out = {}
    for name in models:
        print(f"  accuracy: {name} ...", flush=True)
        yolo = YOLO(str(weights[name]))
        variants = export_variants(yolo, name, imgsz, [r for r in runtimes if r != "pytorch"], str(BUNDLED_DATA),
                                   workdir / "accuracy", calib)
        variants["pytorch"] = weights[name]
        for rt in runtimes:
            try:
                if isinstance(variants.get(rt), Exception):
                    raise variants[rt]
                out[(name, rt)] = map50_95(variants[rt], val_data, imgsz)
            except Exception as e:
                out[(name, rt)] = one_line(e)
        try:
            a, b = (map50_95(weights[name], h, imgsz) for h in halves)
            out[(name, "noise")] = abs(a - b) / 2
        except Exception as e:
            out[(name, "noise")] = one_line(e)
    return out


# --- training throughput (optional, one process per model) ------------------------------------------------------
def train_child(args) -> None:
    """Entry point of the per-model training process: prints one JSON line with its measurements."""
    import torch
    from ultralytics import YOLO

    epoch_times, images, start = [], [], {}

    def on_train_epoch_start(trainer):
        start["t"] = time.perf_counter()

    def on_train_epoch_end(trainer):
        epoch_times.append(time.perf_counter() - start["t"])
        images.append(len(trainer.train_loader.dataset))

    yolo = YOLO(args.child)
    yolo.add_callback("on_train_epoch_start", on_train_epoch_start)
    yolo.add_callback("on_train_epoch_end", on_train_epoch_end)
    torch.set_num_threads(args.threads)
    yolo.train(data=str(BUNDLED_DATA), epochs=1, imgsz=args.train_imgsz, batch=16, workers=0, device="cpu",
               plots=False, amp=False, val=False, seed=0, project=args.project,
               name=re.sub(r"\W", "_", args.child), exist_ok=True, verbose=False)
    print("BENCH " + json.dumps({"train_img_s": sum(images) / sum(epoch_times), "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """Peak resident memory of this process since exec (Linux VmHWM; ru_maxrss would carry the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def measure_training(name: str, args, project: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--project", str(project),
           "--train-imgsz", str(args.acc_imgsz), "--threads", str(args.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    for line in r.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    return {"error": f"training failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}"}


# --- report ----------------------------------------------------------------------------------------------------
def latency_table(models: list[str], runtimes: list[str], results: dict) -> str:
    from ultralytics_addmodules.cli import markdown_table

    header = ["Model"] + [f"{RUNTIMES[rt][0]} ms (IQR)" if k == 0 else "x" for rt in runtimes for k in (0, 1)]
    rows, notes = [], []
    for name in models:
        row = [name]
        for rt in runtimes:
            value, base = results.get((name, rt)), results.get((stock_for(name), rt))
            if isinstance(value, str) or value is None or getattr(value, "error", ""):
                row += ["error", ""]
                notes.append(f"{name} / {RUNTIMES[rt][0]}: {value if isinstance(value, str) else value.error}")
                continue
            row.append(value.cell())
            ok = base is not None and not isinstance(base, str) and not base.error
            row.append(f"{value.median_ms / base.median_ms:.2f}" if ok else "")
        rows.append(row)
    text = markdown_table(header, rows)
    return text + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")


def accuracy_table(models: list[str], runtimes: list[str], results: dict) -> str:
    from ultralytics_addmodules.cli import markdown_table

    header = ["Model"] + [f"{RUNTIMES[rt][0]}" if rt == "pytorch" else f"{RUNTIMES[rt][0]} (Δ)" for rt in runtimes]
    header.append("split-half noise")
    rows, notes = [], []
    for name in models:
        ref = results.get((name, "pytorch"))
        row = [name]
        for rt in runtimes:
            value = results.get((name, rt))
            if not isinstance(value, float):
                row.append("error")
                notes.append(f"{name} / {RUNTIMES[rt][0]}: {value}")
            elif rt == "pytorch" or not isinstance(ref, float):
                row.append(f"{value:.3f}")
            else:
                row.append(f"{value:.3f} ({value - ref:+.3f})")
        noise = results.get((name, "noise"))
        row.append(f"±{noise:.3f}" if isinstance(noise, float) else "")
        rows.append(row)
    return markdown_table(header, rows) + "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")


def machine(threads: int) -> str:
    import torch
    import ultralytics

    from ultralytics_addmodules.measure import cpu_name

    versions = [f"torch {torch.__version__.split('+')[0]}", f"ultralytics {ultralytics.__version__}"]
    for module in ("onnxruntime", "openvino", "nncf"):
        try:
            versions.append(f"{module} {__import__(module).__version__.split('-')[0]}")
        except ImportError:
            pass
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {threads} threads; Python {platform.python_version()}, " \
           + ", ".join(versions)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", help="model YAMLs (default: stock YOLO11 + every shipped YAML at n, s)")
    ap.add_argument("--imgsz", type=int, nargs="+", help="latency image sizes (default 320 640; 64 with --quick)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated subset of {','.join(RUNTIMES)}")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads, fixed for every runtime")
    ap.add_argument("--runs", type=int, help="timed rounds (default 20; 3 with --quick)")
    ap.add_argument("--warmup", type=int, help="warm-up rounds (default 5; 1 with --quick)")
    ap.add_argument("--no-accuracy", action="store_true", help="skip training and mAP (latency only)")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency tables (accuracy only)")
    ap.add_argument("--epochs", type=int, default=15, help="training epochs for the accuracy models")
    ap.add_argument("--acc-imgsz", type=int, default=160, help="training and validation image size for accuracy")
    ap.add_argument("--val-images", type=int, default=400, help="images in the generated validation set")
    ap.add_argument("--weights-dir", type=Path, default=REPO / "benchmarks" / ".weights",
                    help="cache of trained checkpoints (reused by later runs)")
    ap.add_argument("--training", action="store_true", help="also measure training img/s and peak RSS per model")
    ap.add_argument("--quick", action="store_true", help="tiny settings for CI (two models, 64 px, no accuracy)")
    ap.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    ap.add_argument("--train-imgsz", type=int, default=160, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from ultralytics_addmodules.measure import default_threads, protocol

    args.threads = args.threads or default_threads()
    if args.child:
        train_child(args)
        return 0
    import ultralytics_addmodules  # noqa: F401  (activates, also when run from a checkout)

    if args.quick:
        args.models = args.models or ["yolo11n.yaml", "yolo11n-MobileNetV4.yaml"]
        args.no_accuracy = True
    sizes = args.imgsz or ([64] if args.quick else [320, 640])
    runs, warmup = args.runs or (3 if args.quick else 20), args.warmup if args.warmup is not None else (
        1 if args.quick else 5)
    wanted = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in RUNTIMES]
    if unknown:
        ap.error(f"unknown runtimes {unknown}; valid: {', '.join(RUNTIMES)}")
    runtimes = [r for r in wanted if installed(RUNTIMES[r][1])]
    skipped = [f"{RUNTIMES[r][0]} ({RUNTIMES[r][1]} not installed)" for r in wanted if r not in runtimes]
    models = list(dict.fromkeys(args.models or default_models()))
    models = [s for s in dict.fromkeys(stock_for(m) for m in models) if s and s not in models] + models
    load = [f"{x:.2f}" for x in os.getloadavg()]
    started = time.time()
    sections, weights = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.no_accuracy:
            acc_models = [m for m in models if scale_of(m) == "n"]
            print(f"training {len(acc_models)} models ({args.epochs} epochs, {args.acc_imgsz} px; cached in "
                  f"{args.weights_dir}) ...", flush=True)
            weights = {m: trained_weights(m, args.epochs, args.acc_imgsz, args.weights_dir, args.threads)
                       for m in acc_models}
        for imgsz in [] if args.no_latency else sizes:
            results = measure_latency_table(models, imgsz, runtimes, args.threads, warmup, runs,
                                            str(BUNDLED_DATA), tmp / "latency", weights)
            sections.append(f"### Latency at {imgsz}x{imgsz} (ms, median and IQR; x = ratio to stock YOLO11 of "
                            f"the same scale in the same runtime)\n\n" + latency_table(models, runtimes, results))
        if not args.no_accuracy:
            val_data = make_validation_set(tmp / "val_set", args.val_images)
            acc = measure_accuracy(list(weights), runtimes, args.acc_imgsz, weights, val_data, tmp)
            sections.append(f"### mAP50-95 at {args.acc_imgsz}x{args.acc_imgsz} on {args.val_images} generated "
                            f"validation images (Δ = variant minus its PyTorch model)\n\n"
                            + accuracy_table(list(weights), runtimes, acc))
        if args.training:
            rows = {m: measure_training(m, args, tmp / "runs") for m in models}
            sections.append("### Training (1 epoch, bundled dataset)\n\n" + "\n".join(
                f"- {m}: " + (r.get("error") or f"{r['train_img_s']:.1f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB")
                for m, r in rows.items()))
    minutes = (time.time() - started) / 60
    load_after = [f"{x:.2f}" for x in os.getloadavg()]
    report = "\n".join([
        f"Machine: {machine(args.threads)}.",
        f"Command: `python benchmarks/run.py {' '.join(argv if argv is not None else sys.argv[1:])}`; took "
        f"{minutes:.1f} min; load average (1/5/15 min) before {'/'.join(load)}, after {'/'.join(load_after)}.",
        protocol(warmup=warmup, runs=runs, threads=args.threads, runtime="each runtime on CPU", imgsz=sizes[0]),
        *( [f"Not measured: {', '.join(skipped)}."] if skipped else []),
        "",
        *sections,
        "",
    ])
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
