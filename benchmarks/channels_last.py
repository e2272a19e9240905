"""Backbones inferring in channels_last against the same fused models in NCHW, in fused PyTorch on CPU.

    python benchmarks/channels_last.py                         # n scale, 320 and 640, 40 rounds
    python benchmarks/channels_last.py --models yolo11n-MobileNetV4.yaml --imgsz 640 --rounds 60

Our table-driven backbones (``StagedBackbone``) convert their input to channels_last in eval mode and hand the
four features back contiguous (``channels_last_inference``). This script measures what that buys: for each
model, the fused model as shipped and a copy with ``channels_last_inference = False``, next to stock yolo11n,
all in this one process, interleaved (``ultralytics_addmodules.measure``). Ratios divide by stock yolo11n of the
same run. Only PyTorch is timed: exported graphs (ONNX, OpenVINO, NCNN) are traced in NCHW either way.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/run.py: idle threads must not spin
sys.path.insert(0, str(REPO))

DEFAULT_MODELS = ["yolo11n-MobileNetV4.yaml", "yolo11n-MobileNetV1.yaml", "yolo11n-EfficientNetV2.yaml"]


def nchw_copy(model):
    """A copy of a fused model whose backbones keep NCHW (the behaviour before channels_last inference)."""
    from ultralytics_addmodules.nn.builder import StagedBackbone

    copied = copy.deepcopy(model)
    for m in copied.modules():
        if isinstance(m, StagedBackbone):
            m.channels_last_inference = False
    return copied


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--stock", default="yolo11n.yaml", help="the model every ratio divides by")
    ap.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import ultralytics_addmodules  # noqa: F401  (activates the add-on)
    from ultralytics import YOLO
    from ultralytics_addmodules import measure

    print(f"Machine: {measure.cpu_name()}; {measure.torch_runtime('cpu')}")
    for imgsz in args.imgsz:
        runners = {"stock": measure.torch_runner(YOLO(args.stock).model, imgsz)}
        for name in args.models:
            fused = YOLO(name).model.fuse(verbose=False)  # torch_runner's own fuse() finds nothing left to fold
            runners[(name, "channels_last")] = measure.torch_runner(fused, imgsz)
            runners[(name, "NCHW")] = measure.torch_runner(nchw_copy(fused), imgsz)
        stats = measure.measure_latency(runners, warmup=args.warmup, runs=args.rounds, threads=args.threads)
        base = stats["stock"].median_ms
        print(f"\n### {imgsz}x{imgsz}: fused PyTorch, ms (IQR); x = ratio to {args.stock} of this run\n")
        print("| model | NCHW ms (IQR) | x | channels_last ms (IQR) | x | channels_last / NCHW |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| {args.stock} | {base:.1f} (IQR {stats['stock'].iqr_ms:.1f}) | 1.00 | | | |")
        for name in args.models:
            a, b = stats[(name, "NCHW")], stats[(name, "channels_last")]
            print(f"| {name} | {a.median_ms:.1f} (IQR {a.iqr_ms:.1f}) | {a.median_ms / base:.2f} | "
                  f"{b.median_ms:.1f} (IQR {b.iqr_ms:.1f}) | {b.median_ms / base:.2f} | {b.median_ms / a.median_ms:.2f} |")
        print("\n" + measure.protocol(args.warmup, args.rounds, args.threads, imgsz=imgsz))
        warning = measure.spread_warning(stats)
        if warning:
            print(warning)


if __name__ == "__main__":
    main()
