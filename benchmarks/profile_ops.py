"""Per-operator time of models in PyTorch (fused, eager) and ONNX Runtime, side by side.

    python benchmarks/profile_ops.py                                     # yolo11n vs yolo11n-MobileNetV4, 640
    python benchmarks/profile_ops.py --imgsz 320 --opsets 9 17           # also compare ONNX opsets

With ``--latency-runs`` (default 30) every (model, opset) session is also timed interleaved (measure.py).
For each model: total milliseconds per operator type over ``--runs`` forward passes (after warm-up), divided by
the number of runs, and the share of the model's time. PyTorch uses ``torch.profiler`` (CPU ops, self time);
ONNX Runtime its own node profiler (``enable_profiling``; node times, graph optimised at the default level).
Sessions use the same thread count; ONNX Runtime's threads do not spin (see runtimes.py).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")
sys.path.insert(0, str(REPO))


def pytorch_profile(model, x, runs: int) -> dict[str, float]:
    """{op name: ms per forward}, self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    net = copy.deepcopy(model).float().eval().fuse(verbose=False)
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                net(x)
    return {e.key: e.self_cpu_time_total / 1000 / runs for e in prof.key_averages() if e.self_cpu_time_total > 0}


def ort_profile(onnx_file: Path, x, runs: int, threads: int, folder: Path) -> dict[str, float]:
    """{op type: ms per run} from ONNX Runtime's node profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / onnx_file.stem)
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(3 + runs):
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000
    # the first 3 runs are warm-up: scale by the timed share of all runs
    return {op: ms / (3 + runs) for op, ms in per_op.items()}


def show(title: str, profiles: dict[str, dict[str, float]], top: int) -> str:
    from ultralytics_addmodules.cli import markdown_table

    names = list(profiles)
    totals = {n: sum(p.values()) for n, p in profiles.items()}
    ops = sorted({op for p in profiles.values() for op in p}, key=lambda op: -max(p.get(op, 0) for p in
                                                                                    profiles.values()))[:top]
    header = ["op"] + [f"{n} ms (share)" for n in names]
    rows = [[op] + [f"{profiles[n].get(op, 0):.2f} ({profiles[n].get(op, 0) / totals[n]:.0%})" for n in names]
            for op in ops]
    rows.append(["total"] + [f"{totals[n]:.2f}" for n in names])
    return f"### {title}\n\n" + markdown_table(header, rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["yolo11n.yaml", "yolo11n-MobileNetV4.yaml"])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--opsets", type=int, nargs="+", default=None, help="ONNX opsets (default: the export default)")
    ap.add_argument("--top", type=int, default=12, help="operator rows per table")
    ap.add_argument("--latency-runs", type=int, default=30,
                    help="also time every (model, opset) in ONNX Runtime interleaved (0: skip)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from ultralytics import YOLO

    import ultralytics_addmodules  # noqa: F401
    from ultralytics_addmodules.deploy import working_directory
    from ultralytics_addmodules.cli import markdown_table
    from ultralytics_addmodules.export import DEFAULT_ONNX_OPSET
    from ultralytics_addmodules.measure import measure_latency
    from ultralytics_addmodules.runtimes import load_runtime

    torch.set_num_threads(args.threads)
    x = np.random.default_rng(0).random((1, 3, args.imgsz, args.imgsz), dtype=np.float32)
    opsets = args.opsets or [DEFAULT_ONNX_OPSET]
    pt, ort_profiles, sessions = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            yolo = YOLO(name)
            pt[Path(name).stem] = pytorch_profile(yolo.model, torch.from_numpy(x), args.runs)
            for opset in opsets:
                with working_directory(tmp / f"opset{opset}"):
                    onnx_file = Path(yolo.export(format="onnx", imgsz=args.imgsz, opset=opset)).resolve()
                key = f"{Path(name).stem} opset {opset}"
                ort_profiles[key] = ort_profile(onnx_file, x, args.runs, args.threads, tmp)
                sessions[key] = load_runtime("onnx", onnx_file, args.threads)
    print(show(f"PyTorch fused, {args.imgsz}x{args.imgsz}, {args.threads} threads", pt, args.top))
    print(show(f"ONNX Runtime, {args.imgsz}x{args.imgsz}, {args.threads} threads", ort_profiles, args.top))
    if args.latency_runs:
        stats = measure_latency({k: (lambda run=run: run(x)) for k, run in sessions.items()}, warmup=5,
                                runs=args.latency_runs, threads=args.threads)
        print(f"\n### ONNX Runtime latency, interleaved ({args.latency_runs} rounds)\n")
        print(markdown_table(["model / opset", "ms (IQR)"], [[k, v.cell(2)] for k, v in stats.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
