"""Print a Markdown table of layers / parameters / GFLOPs for model YAMLs at given scales.

Examples:
    python scripts/model_table.py yolo11.yaml yolo11-MobileNetV4.yaml --scales n s m
    python scripts/model_table.py yolo11-MobileNetV4.yaml --backbone MobileNetV4ConvMedium MobileNetV4HybridLarge
    python scripts/model_table.py yolo11-EfficientNetV1.yaml --backbone-args "[efficientnet-b1, 1.0, 1.0]"

Numbers come from Ultralytics' own ``model.info()`` (GFLOPs at --imgsz), so they match what training logs.
"""

from __future__ import annotations

import argparse
import re
import sys
from copy import deepcopy
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import yaml  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, yaml_model_load  # noqa: E402
from ultralytics.utils.torch_utils import get_flops, get_num_params  # noqa: E402

import ultralytics_addmodules  # noqa: E402,F401  (activates)


def scaled_name(name: str, scale: str) -> str:
    """'yolo11-X.yaml' + 'n' -> 'yolo11n-X.yaml' (the file name Ultralytics reads the scale from)."""
    return re.sub(r"^(yolo(?:v)?\d+)", rf"\g<1>{scale}", Path(name).name, count=1)


def measure(cfg: dict, imgsz: int) -> tuple[int, int, float]:
    """(layers, parameters, GFLOPs) as Ultralytics' model.info() computes them."""
    model = DetectionModel(deepcopy(cfg), verbose=False)
    return len(list(model.modules())), get_num_params(model), get_flops(model, imgsz)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("yamls", nargs="+", help="model YAML names or paths (without scale letter)")
    ap.add_argument("--scales", nargs="+", default=["n", "s", "m"])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--backbone", nargs="*", default=[], help="replace the module of layer 0 by each of these")
    ap.add_argument("--backbone-args", nargs="*", default=[], help="replace layer 0's args by each (YAML lists)")
    args = ap.parse_args(argv)

    print(f"| model | scale | layer 0 | layers | params | GFLOPs@{args.imgsz} |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.yamls:
        for scale in args.scales:
            base = yaml_model_load(scaled_name(name, scale) if name.startswith("yolo") else name)
            variants = [None]
            if args.backbone or args.backbone_args:
                variants = [(m, None) for m in args.backbone] + [(None, yaml.safe_load(a)) for a in args.backbone_args]
            for variant in variants:
                cfg = deepcopy(base)
                if variant:
                    module, layer_args = variant
                    first = cfg["backbone"][0]
                    first[2] = module or first[2]
                    first[3] = layer_args if layer_args is not None else first[3]
                f, n, module, layer_args = cfg["backbone"][0]
                layers, params, gflops = measure(cfg, args.imgsz)
                print(f"| {Path(name).stem} | {scale} | {module} {layer_args} | {layers} | {params:,} | {gflops:.1f} |")


if __name__ == "__main__":
    main()
