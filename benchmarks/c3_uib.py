"""C3_UIB against the stock models it modifies: parameters, GFLOPs, CPU latency and training-step throughput.

    python benchmarks/c3_uib.py                       # n scale, latency at 320, training steps at 160, batch 16
    python benchmarks/c3_uib.py --scale s --rounds 30

Models: stock yolo11n / yolov5n, our yolo11n-C3_UIB / yolov5n-C3_UIB (expansion 1, the default), and the same
YAMLs with expansion 4 (the former default, one YAML argument away: ``[c2, shortcut, 1, 0.5, 4]``).

Fairness on a shared CPU: every model runs in this one process with a fixed thread count, interleaved (one
forward, or one training step, of each model in turn, repeated for --rounds rounds). A ratio to stock is taken
per round, so load that changes between rounds hits both sides of each ratio alike; the report gives the median
ratio and its interquartile range (the spread across rounds = how noisy the machine was).
Training throughput is one SGD step (forward, loss, backward, update) on a fixed random batch with targets; the
data loader is left out, so the numbers compare the models, not the disk.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")


def with_expansion(cfg: dict, ratio: float) -> dict:
    """The model dict with every C3_UIB given ``ratio`` as its 5th argument (c2, shortcut, g, e, ratio)."""
    cfg = copy.deepcopy(cfg)
    for layer in cfg["backbone"] + cfg["head"]:
        if layer[2] == "C3_UIB":
            args = list(layer[3]) + [True, 1, 0.5][len(layer[3]) - 1:]
            layer[3] = args[:4] + [ratio]
    return cfg


def build(name: str, scale: str, expansion: float | None):
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = yaml_model_load(name.replace("-", f"{scale}-", 1) if "-" in name else name.replace(".yaml", f"{scale}.yaml"))
    if expansion is not None:
        cfg = with_expansion(cfg, expansion)
    return DetectionModel(cfg, verbose=False)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="n")
    ap.add_argument("--imgsz", type=int, default=320, help="latency image size (batch 1)")
    ap.add_argument("--train-imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    import ultralytics_addmodules  # noqa: F401  (activates)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = {  # label -> (YAML, stock label it is compared with, C3_UIB expansion or None)
        "yolo11": ("yolo11.yaml", "yolo11", None),
        "yolo11-C3_UIB": ("yolo11-C3_UIB.yaml", "yolo11", None),
        "yolo11-C3_UIB e4": ("yolo11-C3_UIB.yaml", "yolo11", 4),
        "yolov5": ("yolov5.yaml", "yolov5", None),
        "yolov5-C3_UIB": ("yolov5-C3_UIB.yaml", "yolov5", None),
        "yolov5-C3_UIB e4": ("yolov5-C3_UIB.yaml", "yolov5", 4),
    }
    models, fused, info = {}, {}, {}
    for label, (name, _, expansion) in variants.items():
        model = build(name, args.scale, expansion)
        info[label] = {"params": get_num_params(model), "gflops": get_flops(model, 640)}
        fused[label] = copy.deepcopy(model).eval().fuse(verbose=False)
        model.args = get_cfg()
        models[label] = model.train()

    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    targets = torch.tensor([[i % args.batch, i % 80, 0.5, 0.5, 0.3, 0.4] for i in range(2 * args.batch)])
    batch = {"img": torch.rand(args.batch, 3, args.train_imgsz, args.train_imgsz, generator=g),
             "batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}

    def infer(label):
        with torch.inference_mode():
            fused[label](x)

    def train_step(label):
        loss, _ = models[label].loss(batch)
        optimizers[label].zero_grad()
        loss.sum().backward()
        optimizers[label].step()

    times = {(label, kind): [] for label in variants for kind in ("ms", "step")}
    started = time.time()
    for r in range(args.rounds + 2):  # two warm-up rounds
        for label in variants:
            for kind, fn in (("ms", infer), ("step", train_step)):
                t = time.perf_counter()
                fn(label)
                if r >= 2:
                    times[(label, kind)].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds + 2} done after {(time.time() - started) / 60:.1f} min", file=sys.stderr)
    load = os.getloadavg()[0]
    minutes = (time.time() - started) / 60

    print(f"scale {args.scale}; latency: fused, batch 1, {args.imgsz}x{args.imgsz}; training: SGD steps, batch "
          f"{args.batch}, {args.train_imgsz}x{args.train_imgsz}; {args.threads} threads, {args.rounds} interleaved "
          f"rounds in {minutes:.1f} min, 1-min load average at the end {load:.1f} on {os.cpu_count()} CPUs")
    print("ratios: median over rounds of (model / stock) in the same round, [interquartile range]\n")
    print("| model | params (M) | x | GFLOPs@640 | x | latency ms | x | train img/s | x |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, (_, stock, _) in variants.items():
        row, ref = info[label], info[stock]
        ms = [1000 * t for t in times[(label, "ms")]]
        ips = [args.batch / t for t in times[(label, "step")]]
        lat_ratio = quartiles([a / b for a, b in zip(times[(label, "ms")], times[(stock, "ms")])])
        ips_ratio = quartiles([b / a for a, b in zip(times[(label, "step")], times[(stock, "step")])])
        print(f"| {label.replace('-', f'{args.scale}-', 1) if '-' in label else label + args.scale} "
              f"| {row['params'] / 1e6:.2f} | {row['params'] / ref['params']:.2f} "
              f"| {row['gflops']:.2f} | {row['gflops'] / ref['gflops']:.2f} "
              f"| {statistics.median(ms):.1f} | {lat_ratio[1]:.2f} [{lat_ratio[0]:.2f}-{lat_ratio[2]:.2f}] "
              f"| {statistics.median(ips):.1f} | {ips_ratio[1]:.2f} [{ips_ratio[0]:.2f}-{ips_ratio[2]:.2f}] |")


if __name__ == "__main__":
    main()
