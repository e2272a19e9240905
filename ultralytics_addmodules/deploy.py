"""``python -m ultralytics_addmodules deploy-check MODEL``: will this model deploy, before anyone trains it for days?

For a model YAML (bare names of shipped YAMLs work) or a trained .pt, and each requested format whose converter
is installed: export it through Ultralytics' own exporter, run the file in its runtime and compare the output
with PyTorch (fp32, and fp16 where the format has a CPU fp16 variant), then time it interleaved with stock
YOLO11n exported to the same format. Formats whose converter is missing are listed with their pip command.
A table on screen, ``deploy_check.csv`` and the exported files in ``runs/deploy-check/N``.

Errors are relative to the output's scale: ``max |exported - pytorch| / max |pytorch|``, separately for the box
rows and the class-score rows of the Detect output. A YAML has no trained weights, so the check gives it random
weights with BatchNorm statistics measured on random images and a damped head (the output then varies with
the input as a trained detector's does; a freshly initialised model answers almost the same for every image,
so parity would prove nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import export as export_setup
from .cli import fail, markdown_table, new_run_dir
from .messages import bilingual

COMMAND = "deploy-check"
FORMATS = ("onnx", "openvino", "ncnn", "tflite", "torchscript")
FP16_EXPORT = {"openvino", "ncnn", "tflite"}  # formats with an fp16 variant that runs on a CPU
BASELINE = "yolo11n.yaml"
PARITY_LIMIT = 1e-3  # fp32: max error relative to scale; float32 reordering gives about 1e-5
FP16_LIMIT = 0.05  # fp16: rounding weights to fp16 moves stock YOLO11n's outputs by about 1e-2 of their scale


@dataclass
class FormatResult:
    """One row of the check: a format's export, its parity and its latency against stock YOLO11n."""

    format: str
    status: str = ""  # ok, mismatch, failed, missing
    reason: str = ""
    fp32_box_err: float = math.nan
    fp32_cls_err: float = math.nan
    fp16_box_err: float = math.nan
    fp16_cls_err: float = math.nan
    ms: float = math.nan
    ms_iqr: float = math.nan
    baseline_ms: float = math.nan
    ratio: float = math.nan
    file: str = ""


# --- models -------------------------------------------------------------------------------------------------
def load_model(spec: str):
    """A YOLO object for a YAML (random weights made informative, see the module docstring) or a .pt file."""
    from ultralytics import YOLO

    yolo = YOLO(spec)
    if str(spec).endswith((".yaml", ".yml")):
        informative_random_weights_(yolo.model)
    return yolo


def calibrate_random_batchnorm_(model, generator, make_input) -> None:
    """Random BatchNorm affine parameters, then their statistics measured in train mode on two batches from
    ``make_input(generator)``: features stay O(1), and folding the BatchNorms really changes the weights."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(make_input(generator))


def informative_random_weights_(model, seed: int = 0) -> None:
    """BatchNorm statistics measured on random images (features O(1)) and the head's last convolutions damped:
    a random model whose output depends on its input, for parity checks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    calibrate_random_batchnorm_(model, g, lambda gen: torch.rand(4, 3, 64, 64, generator=gen))
    with torch.no_grad():
        head = model.model[-1]
        for branch in (*getattr(head, "cv2", ()), *getattr(head, "cv3", ())):  # softmax / sigmoid not saturated
            branch[-1].weight.mul_(0.1)
    model.eval()


def pytorch_outputs(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of the fused fp32 model and of the same model with its weights rounded to fp16 (fp32 compute)."""
    import torch

    fused = copy.deepcopy(model).float().eval().fuse(verbose=False)
    rounded = copy.deepcopy(fused)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
        t = torch.from_numpy(x)
        return fused(t)[0].numpy(), rounded(t)[0].numpy()


def relative_errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(box error, class-score error) of a Detect output, each as max abs difference / max abs reference."""
    if got.shape != ref.shape:
        raise ValueError(f"output shape {got.shape} differs from PyTorch's {ref.shape}")
    errors = []
    for rows in (slice(0, 4), slice(4, None)):
        scale = float(np.abs(ref[:, rows]).max()) or 1.0
        errors.append(float(np.abs(got[:, rows] - ref[:, rows]).max()) / scale)
    return errors[0], errors[1]


# --- export -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def working_directory(path: Path):
    """Ultralytics writes a YAML model's exports into the working directory."""
    previous = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(previous)


def export_file(yolo, fmt: str, imgsz: int, folder: Path, half: bool = False) -> Path:
    """Export ``yolo`` to ``fmt`` inside ``folder``; the path of the file (or folder) its runtime loads."""
    with working_directory(folder):
        return Path(yolo.export(format=fmt, imgsz=imgsz, half=half)).resolve()


def local_copy(spec: str, folder: Path) -> str:
    """A .pt is exported next to itself: copy it into the run folder first (the user's folder stays clean)."""
    if str(spec).endswith(".pt"):
        folder.mkdir(parents=True, exist_ok=True)
        return str(shutil.copy2(spec, folder / Path(spec).name))
    return spec


def check_model(spec: str, formats: list[str], imgsz: int, save_dir: Path, threads: int, runs: int,
                warmup: int, progress=print) -> list[FormatResult]:
    """Export, compare and time ``spec`` in every format (see the module docstring); one row per format."""
    from .measure import measure_latency, torch_runner
    from .runtimes import load_runtime

    exports = save_dir / "exports"
    yolo = load_model(local_copy(spec, exports / "model"))
    baseline = load_model(BASELINE)
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    reference, rounded = pytorch_outputs(yolo.model, x)

    results = [FormatResult("pytorch", "ok", "fused fp32; fp16 = weights rounded to fp16", 0.0, 0.0,
                            *relative_errors(rounded, reference))]
    timed = {("pytorch", "model"): torch_runner(yolo.model, imgsz),
             ("pytorch", "baseline"): torch_runner(baseline.model, imgsz)}
    for fmt in formats:
        row = FormatResult(fmt)
        results.append(row)
        missing = export_setup.missing_modules(fmt) or (["pnnx"] if fmt == "ncnn" and not export_setup.pnnx_dir()
                                                        else [])
        if missing:
            row.status, row.reason = "missing", export_setup.CONVERTERS[fmt].pip
            continue
        progress(f"{COMMAND}: {fmt} ...")
        try:
            path = export_file(yolo, fmt, imgsz, exports / fmt / "model")
            row.file = str(path)
            run = load_runtime(fmt, path, threads)
            row.fp32_box_err, row.fp32_cls_err = relative_errors(run(x), reference)
            if fmt == "tflite":  # one TFLite export writes the float16 file beside the float32 one
                half = path.with_name(path.name.replace("_float32", "_float16"))
            elif fmt in FP16_EXPORT:
                half = export_file(yolo, fmt, imgsz, exports / fmt / "fp16", half=True)
            if fmt in FP16_EXPORT:
                row.fp16_box_err, row.fp16_cls_err = relative_errors(load_runtime(fmt, half, threads)(x), reference)
            base_run = load_runtime(fmt, export_file(baseline, fmt, imgsz, exports / fmt / "yolo11n"), threads)
        except Exception as e:  # one format failing must not hide the others
            row.status, row.reason = "failed", _one_line(e)
            continue
        row.status = "ok" if max(row.fp32_box_err, row.fp32_cls_err) < PARITY_LIMIT else "mismatch"
        timed[(fmt, "model")] = lambda run=run: run(x)
        timed[(fmt, "baseline")] = lambda run=base_run: run(x)

    progress(f"{COMMAND}: timing {len(timed)} models interleaved ...")
    stats = measure_latency(timed, warmup=warmup, runs=runs, threads=threads)
    for row in results:
        model, base = stats.get((row.format, "model")), stats.get((row.format, "baseline"))
        if model is None or base is None:
            continue
        if model.error or base.error:
            row.status, row.reason = "failed", model.error or f"yolo11n: {base.error}"
            continue
        row.ms, row.ms_iqr, row.baseline_ms = model.median_ms, model.iqr_ms, base.median_ms
        row.ratio = model.median_ms / base.median_ms
    return results


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- output -------------------------------------------------------------------------------------------------
def _num(value: float, fmt: str = ".1e") -> str:
    return "" if value is None or math.isnan(value) else format(value, fmt)


def table(results: list[FormatResult]) -> str:
    """The on-screen Markdown table."""
    from .runtimes import RUNTIME_NAMES

    header = ["Format", "Runtime", "Status", "fp32 err box / cls", "fp16 err box / cls", "ms (IQR)",
              "yolo11n ms", "x yolo11n", "Note"]
    rows = []
    for r in results:
        fp32 = f"{_num(r.fp32_box_err)} / {_num(r.fp32_cls_err)}" if not math.isnan(r.fp32_box_err) else ""
        fp16 = f"{_num(r.fp16_box_err)} / {_num(r.fp16_cls_err)}" if not math.isnan(r.fp16_box_err) else ""
        ms = f"{_num(r.ms, '.1f')} ({_num(r.ms_iqr, '.1f')})" if not math.isnan(r.ms) else ""
        note = r.reason or ("fp16 export needs a GPU in Ultralytics" if r.status == "ok" and not fp16 else "")
        rows.append([r.format, RUNTIME_NAMES.get(r.format, ""), r.status, fp32, fp16, ms,
                     _num(r.baseline_ms, ".1f"), _num(r.ratio, ".2f"), note])
    return markdown_table(header, rows, numeric=[False, False, False, True, True, True, True, True, False])


def write_csv(results: list[FormatResult], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        for r in results:
            writer.writerow(asdict(r))


# --- command line -------------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog=f"python -m ultralytics_addmodules {COMMAND}")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "部署检查：把模型导出到各个格式，与 PyTorch 比较输出（fp32 和 fp16），并与同一格式的官方 YOLO11n 交替测速；\n"
        "未安装的转换器会列出安装命令。结果：屏幕上的表格，runs/deploy-check/N/deploy_check.csv。\n\n"
        "Will it deploy? Export the model to each format, compare its output with PyTorch (fp32 and fp16) and\n"
        "time it against stock YOLO11n in the same format, interleaved; missing converters are listed with their\n"
        "pip command. Output: a table on screen and runs/deploy-check/N/deploy_check.csv.")
    p.add_argument("model", help=bilingual("模型 YAML（可直接写自带 YAML 的文件名）或 .pt", "model YAML (bare names "
                                           "of shipped YAMLs work) or .pt"))
    p.add_argument("--imgsz", type=int, default=320, help=bilingual("图像尺寸（32 的倍数）", "image size (multiple of "
                                                                     "32, default 320)"))
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=bilingual("逗号分隔的格式", f"comma-separated formats (default {','.join(FORMATS)})"))
    p.add_argument("--threads", type=int, default=None, help=bilingual("固定的 CPU 线程数", "fixed CPU threads "
                                                                       "(default: all cores, at most 4)"))
    p.add_argument("--runs", type=int, default=10, help=bilingual("计时轮数", "timed rounds (default 10)"))
    p.add_argument("--warmup", type=int, default=3, help=bilingual("预热轮数", "warm-up rounds (default 3)"))
    p.add_argument("--project", default=f"runs/{COMMAND}", help=bilingual("结果目录的上级目录", "parent folder of "
                                                                            "the run folder"))
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``deploy-check`` from parsed arguments; returns the exit code (0: every installed format deploys)."""
    formats = [f.strip().lower() for f in str(args.formats).split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        return fail(COMMAND, f"--formats 中有不支持的格式 {unknown or args.formats!r}；可选：{', '.join(FORMATS)}",
                    f"--formats has unsupported {unknown or args.formats!r}; valid: {', '.join(FORMATS)}")
    if args.imgsz < 32 or args.imgsz % 32:
        return fail(COMMAND, f"--imgsz {args.imgsz} 无效：需要 32 的正整数倍，例如 320",
                    f"--imgsz {args.imgsz} is invalid: use a positive multiple of 32, e.g. 320")
    for name, value, low in (("--runs", args.runs, 1), ("--warmup", args.warmup, 0), ("--threads", args.threads, 1)):
        if value is not None and value < low:
            return fail(COMMAND, f"{name} {value} 无效：需要 >= {low}", f"{name} {value} is invalid: use >= {low}")
    model = str(args.model)
    if not model.endswith((".yaml", ".yml", ".pt")):
        return fail(COMMAND, f"模型 {model!r} 无效：需要 .yaml 或 .pt 文件", f"model {model!r} is invalid: give a "
                    ".yaml or .pt file")
    if model.endswith(".pt") and not Path(model).is_file():
        return fail(COMMAND, f"找不到模型文件 {model!r}", f"model file {model!r} does not exist")
    try:
        load_model(model)  # bad YAML names and broken files fail here, before a run folder exists
    except Exception as e:
        return fail(COMMAND, f"无法加载模型 {model!r}：{_one_line(e)}", f"cannot load model {model!r}: {_one_line(e)}")

    from .measure import default_threads, protocol

    threads = args.threads or default_threads()
    save_dir = new_run_dir(Path(args.project)).resolve()
    results = check_model(model, list(dict.fromkeys(formats)), args.imgsz, save_dir, threads, args.runs, args.warmup)
    write_csv(results, save_dir / "deploy_check.csv")
    print()
    print(f"{COMMAND}: {model} at {args.imgsz}x{args.imgsz}")
    print(table(results), end="")
    print(f"\nerrors: max |exported - PyTorch| / max |PyTorch|, box rows / class rows; ok below {PARITY_LIMIT:g}. "
          + protocol(warmup=args.warmup, runs=args.runs, threads=threads, runtime="each format's runtime",
                     imgsz=args.imgsz))
    print(f"results saved to {save_dir} (deploy_check.csv, exports/)")
    installed = [r for r in results if r.status != "missing"]
    return 0 if all(r.status == "ok" for r in installed) else 1


__all__ = ["FORMATS", "FormatResult", "build_parser", "check_model", "relative_errors", "run"]
