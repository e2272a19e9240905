"""Does a COCO-style neck and head help a swapped-backbone model? Measured on the bundled dataset.

    python benchmarks/pretrained_transfer.py                        # 20 stock epochs, then 2 x 20 epochs
    python benchmarks/pretrained_transfer.py --stock-epochs 3 --epochs 2 --imgsz 64    # a quick check
    python benchmarks/pretrained_transfer.py --stock-run runs/benchmarks/pretrained_transfer/stock  # reuse step 1

1. Trains stock YOLO11n on dataset/data.yaml (it stands in for the COCO detector yolo11n.pt, which cannot be
   downloaded here).
2. Fine-tunes yolo11n-MobileNetV4 from the same seed twice: (a) neck and head random (what a backbone swap gives
   today), (b) neck and head transferred from step 1's best.pt with ``load_pretrained``. Both backbones start
   random (no ImageNet weights offline), so the only difference is the neck and head.
3. Prints mAP50-95 per epoch of both runs as a Markdown table and writes it, with the transfer report, to
   runs/benchmarks/pretrained_transfer/result.json.
Each training runs in its own process (same seed, Ultralytics' deterministic mode), so none inherits another's state.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")

TRAIN = """
import json, logging, sys
import ultralytics_addmodules
from ultralytics import YOLO

report = []  # the transfer as applied to the model being trained (the dataset's class count)


class Grab(logging.Handler):
    def emit(self, record):
        if "into the model being trained" in record.getMessage():
            report.append(record.getMessage().split("trained: ", 1)[1])


logging.getLogger("ultralytics").addHandler(Grab(logging.INFO))
logging.getLogger("ultralytics").setLevel(logging.INFO)
cfg = json.loads(sys.argv[1])
model = YOLO(cfg.pop("model"))
transfer = cfg.pop("transfer", None)
if transfer:
    ultralytics_addmodules.load_pretrained(model, transfer)
model.train(**cfg)
print("REPORT " + json.dumps(report))
"""


def train(model: str, name: str, args: argparse.Namespace, epochs: int,
          transfer: str | None = None) -> tuple[Path, list]:
    cfg = dict(model=model, data=str(REPO / "dataset" / "data.yaml"), epochs=epochs, imgsz=args.imgsz, batch=16,
               seed=0, deterministic=True, device="cpu", workers=0, plots=False, exist_ok=True,
               project=str(args.out), name=name, transfer=transfer)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(cfg)], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"training {name} failed:\n{run.stderr[-3000:]}")
    report = next((json.loads(line[7:]) for line in run.stdout.splitlines() if line.startswith("REPORT ")), [])
    return args.out / name, report


def map_per_epoch(run_dir: Path) -> list[float]:
    with open(run_dir / "results.csv") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    return [round(float(row["metrics/mAP50-95(B)"]), 4) for row in rows]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stock-epochs", type=int, default=20, help="epochs of stock YOLO11n (default 20)")
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs of each variant (default 20)")
    p.add_argument("--imgsz", type=int, default=160, help="training image size (default 160, the images' size)")
    p.add_argument("--model", default="yolo11n-MobileNetV4.yaml", help="the swapped-backbone model")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "benchmarks" / "pretrained_transfer")
    p.add_argument("--stock-run", type=Path, help="reuse this finished stock run folder instead of step 1")
    args = p.parse_args(argv)

    stock_dir = args.stock_run or train("yolo11n.yaml", "stock", args, args.stock_epochs)[0]
    checkpoint = stock_dir / "weights" / "best.pt"
    random_dir, _ = train(args.model, "random_neck_head", args, args.epochs)
    transfer_dir, report = train(args.model, "transferred_neck_head", args, args.epochs, str(checkpoint))

    stock, random_, transferred = (map_per_epoch(d) for d in (stock_dir, random_dir, transfer_dir))
    print(f"stock yolo11n after {len(stock)} epochs: mAP50-95 {stock[-1]:.3f}")
    print(f"transfer: {report[0] if report else '-'}\n")
    print(f"| epoch | {args.model}, random neck/head | transferred neck/head |")
    print("|---:|---:|---:|")
    for epoch, (a, b) in enumerate(zip(random_, transferred), 1):
        print(f"| {epoch} | {a:.3f} | {b:.3f} |")
    result = {"stock_map50_95": stock, "random": random_, "transferred": transferred, "report": report,
              "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
