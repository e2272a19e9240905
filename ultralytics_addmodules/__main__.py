"""Command line: ``python -m ultralytics_addmodules SUBCOMMAND ...`` (also ``ultralytics-addmodules``).

Subcommands are listed in ``SUBCOMMANDS``: each entry names a module exposing ``build_parser(parser)``
(adds its arguments) and ``run(args) -> int`` (exit code). Adding a subcommand is one entry there.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module inside this package, one-line help)
SUBCOMMANDS = {
    "compare": ("compare", "对比模型：参数量、GFLOPs、延迟、mAP（表格 + 帕累托图） | compare models: params, GFLOPs, "
                           "latency, mAP (table + Pareto plot)"),
    "deploy-check": ("deploy", "能否部署？导出 ONNX/OpenVINO/NCNN/TFLite/TorchScript，一致性与速度 | will it deploy? "
                               "export to ONNX/OpenVINO/NCNN/TFLite/TorchScript, parity, speed"),
    "check": ("dataset_check", "检查数据集 | check a dataset: YAML, names, classes.txt, labels, every image"),
    "layers": ("layers", "逐层参数量与 GFLOPs | per-layer parameters and GFLOPs"),
    "heatmap": ("heatmap", "热力图（LayerCAM / Grad-CAM） | heatmaps (LayerCAM / Grad-CAM) over images"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ultralytics_addmodules",
                                     description="ultralytics-addmodules command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints usage / help, or the "invalid choice" error listing the commands
        return 2
    module = importlib.import_module(f"{__package__}.{SUBCOMMANDS[argv[0]][0]}")
    sub_parser = argparse.ArgumentParser(prog=f"{parser.prog} {argv[0]}")
    args = module.build_parser(sub_parser).parse_args(argv[1:])
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
