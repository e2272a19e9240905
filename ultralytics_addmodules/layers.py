"""Per-layer cost of a model: ``python -m ultralytics_addmodules layers MODEL [--imgsz 640]``.

One row per YAML layer (its index, inputs, module, parameters, GFLOPs and share of the model total); a
multi-output backbone (layer 0 of our YAMLs) is also broken into its parts (stem and stages), shown as
indented rows under it. The columns add up to what Ultralytics reports for the whole model
(``model.info(imgsz=...)``): parameters exactly, GFLOPs to float rounding.

How GFLOPs are counted: like Ultralytics, with thop (multiply-adds x 2). Ultralytics 8.3 profiles the model
on a stride-sized image (32 x 32) and scales the count by the image area; each layer here is profiled on
the input it receives in that same forward pass and scaled the same way, so the sum is the reported total.
When the installed Ultralytics counts differently (newer releases profile at the real size, which differs
for attention, whose cost grows with the square of the area), the layers are profiled at the real size
instead: the method whose total matches the reported one is used, and the table says which.
"""

from __future__ import annotations

import argparse
import copy
import csv
from dataclasses import dataclass
from pathlib import Path

from .cli import fail, markdown_table, new_run_dir

COMMAND = "layers"


@dataclass
class LayerCost:
    """One row: a YAML layer (``index`` "7") or a part of a backbone layer ("0.stem", "0.stages.2")."""

    index: str
    source: str  # the layer's ``from`` (inputs), empty for parts
    module: str
    params: int
    gflops: float
    part: bool = False  # a part of the layer above it (not counted again in the sums)


@dataclass
class LayerCosts:
    """All rows, and the model totals as Ultralytics reports them."""

    rows: list[LayerCost]
    total_params: int
    total_gflops: float
    imgsz: int
    method: str  # how GFLOPs were counted, one sentence

    @property
    def layers(self) -> list[LayerCost]:
        """Top-level rows only (the ones that add up to the totals)."""
        return [r for r in self.rows if not r.part]


def _profile_ops(module, args: tuple) -> float:
    """thop's multiply-add count of one call ``module(*args)`` (thop removes its hooks and counters after)."""
    import thop

    return float(thop.profile(module, inputs=args, verbose=False)[0])


def _capture_inputs(model, modules: list, image) -> dict[int, tuple]:
    """The positional inputs each of ``modules`` receives in one forward pass of ``model`` on ``image``.

    Tensors are cloned, so a later in-place operation cannot change what was recorded; lists are copied
    (Detect writes into the list it receives).
    """
    import torch

    def snapshot(value):
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        if isinstance(value, (list, tuple)):
            return type(value)(snapshot(v) for v in value)
        return value

    seen: dict[int, tuple] = {}
    handles = []
    for k, m in enumerate(modules):
        def hook(_module, args, k=k):
            seen.setdefault(k, snapshot(args))  # the first call is the one the chain of layers makes
        handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for h in handles:
            h.remove()
    return seen


def backbone_parts(module) -> list[tuple[str, object]]:
    """(name, submodule) parts of a multi-output backbone: stem and stages for our families; the top-level
    blocks of a wrapped network otherwise (the first module down the tree with more than one child)."""
    if hasattr(module, "stem") and hasattr(module, "stages"):
        return [("stem", module.stem)] + [(f"stages.{k}", s) for k, s in enumerate(module.stages)]
    prefix, node = "", module
    while len(list(node.children())) == 1:
        name, node = next(iter(node.named_children()))
        prefix += name + "."
    return [(prefix + name, child) for name, child in node.named_children()]


def _count(model, image, scale: float) -> tuple[list[float], dict[int, list[tuple[str, float | None]]]]:
    """GFLOPs of every top-level layer on ``image`` (times ``scale``), and of the parts of backbone layers
    (None for a part the forward pass did not call)."""
    from .nn.backbone import Backbone

    layers = list(model.model)
    inputs = _capture_inputs(model, layers, image)
    gflops = [_profile_ops(m, inputs[i]) / 1e9 * 2 * scale if i in inputs else 0.0 for i, m in enumerate(layers)]
    parts: dict[int, list[tuple[str, float | None]]] = {}
    for i, m in enumerate(layers):
        if isinstance(m, Backbone) and i in inputs:
            named = backbone_parts(m)
            part_inputs = _capture_inputs(m, [p for _, p in named], *inputs[i])
            parts[i] = [(name, _profile_ops(p, part_inputs[k]) / 1e9 * 2 * scale if k in part_inputs else None)
                        for k, (name, p) in enumerate(named)]
    return gflops, parts


def layer_costs(model, imgsz: int = 640, totals: tuple[int, float] | None = None) -> LayerCosts:
    """Per-layer parameters and GFLOPs of an Ultralytics model (see the module docstring).

    ``totals`` is (parameters, GFLOPs) as ``measure.model_size`` returned them for this model and ``imgsz``,
    when the caller has them already; they are computed otherwise.
    """
    import torch

    from .measure import model_size

    model = copy.deepcopy(model).float().eval()  # profiled on a copy: the caller's model is never touched
    total_params, total_gflops = totals or model_size(model, imgsz)
    p = next(model.parameters())
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    candidates = []
    try:  # Ultralytics 8.3's way: a stride-sized image, scaled by area
        proxy = torch.zeros(1, p.shape[1], stride, stride)
        candidates.append((_count(model, proxy, (imgsz / stride) ** 2),
                           f"thop on a {stride}x{stride} image, scaled to {imgsz}x{imgsz} by area "
                           "(as Ultralytics 8.3 counts)"))
    except Exception:  # models that cannot run at stride size (Ultralytics then profiles at full size too)
        pass
    if not candidates or abs(sum(candidates[0][0][0]) - total_gflops) > 1e-6 * max(total_gflops, 1e-9):
        full = torch.zeros(1, p.shape[1], imgsz, imgsz)
        candidates.append((_count(model, full, 1.0), f"thop on a {imgsz}x{imgsz} image"))
    (gflops, parts), method = min(candidates, key=lambda c: abs(sum(c[0][0]) - total_gflops))

    rows = []
    for i, m in enumerate(model.model):
        params = sum(t.numel() for t in m.parameters())
        rows.append(LayerCost(str(i), str(getattr(m, "f", "")), type(m).__name__, params, gflops[i]))
        if i in parts:
            named = backbone_parts(m)
            for (name, part), (_, g) in zip(named, parts[i]):
                rows.append(LayerCost(f"{i}.{name}", "", type(part).__name__, sum(t.numel() for t in part.parameters()),
                                      g if g is not None else 0.0, part=True))
            rest_params = params - sum(sum(t.numel() for t in part.parameters()) for _, part in named)
            rest_gflops = gflops[i] - sum(g for _, g in parts[i] if g is not None)
            if rest_params or abs(rest_gflops) > 1e-9 * max(gflops[i], 1e-9):  # work done outside the parts
                rows.append(LayerCost(f"{i}.(other)", "", "", rest_params, rest_gflops, part=True))
    return LayerCosts(rows, total_params, total_gflops, imgsz, method)


# --- output ----------------------------------------------------------------------------------------------
def table_rows(costs: LayerCosts) -> list[list[str]]:
    """Rows for ``markdown_table``: parts are indented under their layer; a last row holds the sums."""
    total_p = max(costs.total_params, 1)
    total_g = costs.total_gflops if costs.total_gflops > 0 else 1.0
    rows = []
    for r in costs.rows:
        name = ("  └ " + r.index) if r.part else r.index
        rows.append([name, r.source, r.module, f"{r.params:,}", f"{100 * r.params / total_p:.1f}%",
                     f"{r.gflops:.4f}", f"{100 * r.gflops / total_g:.1f}%"])
    sum_p = sum(r.params for r in costs.layers)
    sum_g = sum(r.gflops for r in costs.layers)
    rows.append(["sum", "", "", f"{sum_p:,}", f"{100 * sum_p / total_p:.1f}%", f"{sum_g:.4f}",
                 f"{100 * sum_g / total_g:.1f}%"])
    return rows


HEADER = ["Layer", "From", "Module", "Params", "Params %", "GFLOPs", "GFLOPs %"]


def markdown(costs: LayerCosts, model_name: str) -> str:
    """The per-layer table and a line with the model totals and the counting method."""
    return (f"Per-layer cost of {model_name} at {costs.imgsz}x{costs.imgsz}\n\n"
            + markdown_table(HEADER, table_rows(costs), [False, False, False, True, True, True, True])
            + f"\nModel totals as Ultralytics reports them: {costs.total_params:,} parameters, "
              f"{costs.total_gflops:.4f} GFLOPs. GFLOPs counted with {costs.method}. Indented rows are parts of "
              "the layer above them (not added again in the sum).\n")


def write_layer_files(costs: LayerCosts, stem: Path, model_name: str) -> dict[str, Path]:
    """``stem``.md (the table) and ``stem``.csv (one row per layer and part)."""
    paths = {"md": stem.with_name(stem.name + ".md"), "csv": stem.with_name(stem.name + ".csv")}
    paths["md"].write_text(markdown(costs, model_name), encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "from", "module", "params", "gflops", "part_of_layer_above"])
        for r in costs.rows:
            writer.writerow([r.index, r.source, r.module, r.params, f"{r.gflops:.6f}", int(r.part)])
    return paths


# --- command line ----------------------------------------------------------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m ultralytics_addmodules layers")
    p.description = ("逐层列出参数量、GFLOPs 及占比（骨干网络拆成 stem 与各 stage），合计等于 Ultralytics 报告的总数。 | "
                     "Per-layer parameters, GFLOPs and share (backbones split into stem and stages); the sums "
                     "equal the totals Ultralytics reports.")
    p.add_argument("model", help="模型 YAML 或 .pt 检查点 | model YAML (bare names from yaml/ work) or .pt checkpoint")
    p.add_argument("--imgsz", type=int, default=640, help="计算 GFLOPs 的图像尺寸 | image size for GFLOPs (default 640)")
    p.add_argument("--project", default="runs/layers", help="运行目录的上级目录 | parent folder of the run folder")
    p.add_argument("--name", default=None, help="运行目录名（默认：下一个编号） | run folder name (default: next number)")
    return p


def load_model(name: str, command: str):
    """(Ultralytics model, None) for a YAML or .pt, or (None, exit code) after one bilingual error line."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml", ".pt"):
        return None, fail(command, f"模型必须是 .yaml/.yml 或 .pt 文件，收到 {name!r}",
                          f"the model must be a .yaml/.yml or .pt file, got {name!r}")
    if path.suffix == ".pt" and not path.is_file():
        return None, fail(command, f"找不到检查点 {name!r}", f"checkpoint not found: {name!r}")
    from ultralytics import YOLO

    try:
        return YOLO(name).model, None
    except FileNotFoundError:
        return None, fail(command, f"找不到模型 {name!r}（YAML 路径，或 yaml/ 中的名称如 yolo11n-MobileNetV4.yaml）",
                          f"model not found: {name!r} (a YAML path, or a name from yaml/ such as "
                          "yolo11n-MobileNetV4.yaml)")
    except Exception as e:
        from .measure import one_line

        return None, fail(command, f"无法构建模型 {name!r}：{one_line(e)}", f"cannot build model {name!r}: {one_line(e)}")


def run(args: argparse.Namespace) -> int:
    """Run the ``layers`` subcommand; returns the process exit code."""
    if args.imgsz < 32 or args.imgsz % 32:
        return fail(COMMAND, f"--imgsz 必须是 32 的正整数倍，收到 {args.imgsz}",
                    f"--imgsz must be a positive multiple of 32, got {args.imgsz}")
    model, code = load_model(args.model, COMMAND)
    if model is None:
        return code
    costs = layer_costs(model, args.imgsz)
    save_dir = new_run_dir(Path(args.project), args.name)
    paths = write_layer_files(costs, save_dir / f"layers-{Path(args.model).stem}", args.model)
    print(paths["md"].read_text(encoding="utf-8"), end="")
    print(f"\n结果已保存到 {save_dir} | saved to {save_dir} ({paths['md'].name}, {paths['csv'].name})")
    return 0
