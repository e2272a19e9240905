"""Train a YOLO model: edit the settings below, then run ``python train.py``.

Every setting can also be given on the command line, which wins over the value written here:

    python train.py                                        # the settings below
    python train.py --model yolo11n.yaml                   # same data and schedule, stock YOLO11n
    python train.py --data path/to/data.yaml --epochs 100 --imgsz 640 --batch 16
    python train.py --model yolo11n-MobileNetV4-pretrained.yaml --pretrained mnv4_small.pth
    python train.py --model yolo11n-MobileNetV4-pretrained.yaml --pretrained mnv4_small.pth --pretrained yolo11n.pt
    python train.py --model yolo11n-MobileNetV4-pretrained.yaml --pretrained mnv4_small.pth --freeze-backbone 5
    python train.py --resume                               # continue the latest interrupted run

The defaults are the quick demo of the README: the bundled sample dataset (dataset/), small images and
few epochs, so a CPU finishes in a few minutes. For real data raise EPOCHS (100-300) and IMGSZ (640).
Results go to PROJECT/NAME (Ultralytics' runs/detect/train, train2, ... by default): weights/best.pt,
results.csv (mAP per epoch) and plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------------
# Settings: edit these (or override them on the command line)
# ---------------------------------------------------------------------------------------------------
MODEL = "yolo11n-MobileNetV4.yaml"  # a YAML name from yaml/ or Ultralytics (yolo11n.yaml), or a .pt file
DATA = HERE / "dataset" / "data.yaml"  # your data YAML (see docs/workflow.md for the folder layout)
EPOCHS = 20  # passes over the training images
IMGSZ = 160  # training image size in pixels (the sample images are 160x160; use 640 for real data)
BATCH = 16  # images per step; lower it if you run out of (GPU) memory
DEVICE = None  # None: the first GPU if there is one, else the CPU; or "cpu", "0", "0,1"
WORKERS = 2  # data-loading processes (Ultralytics uses 0 on the CPU)
PROJECT = None  # folder for the runs; None: Ultralytics' default runs/detect
NAME = None  # run name inside PROJECT; None: train, train2, ...
PRETRAINED = None  # pretrained weights (see docs/pretrained.md): a timm/torchvision state-dict file for the
# backbone (needs a *-pretrained.yaml model), "timm"/"torchvision" (cache or download), an Ultralytics checkpoint
# such as yolo11n.pt for the neck and head, or a list of them
FREEZE_BACKBONE = 0  # keep the backbone frozen for this many first epochs (useful with PRETRAINED)
SEED = 0  # same seed, same data order and initial weights
PLOTS = True  # training plots (results.png, label plots, sample mosaics)
SKIP_BAD_IMAGES = False  # True: train without the images that do not decode (default: stop and list them)
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a YOLO model (settings at the top of train.py).")
    p.add_argument("--model", default=MODEL, help=f"model YAML or .pt (default: {MODEL})")
    p.add_argument("--data", default=DATA, help="data YAML (default: the bundled dataset/data.yaml)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"default: {EPOCHS}")
    p.add_argument("--imgsz", type=int, default=IMGSZ, help=f"default: {IMGSZ}")
    p.add_argument("--batch", type=int, default=BATCH, help=f"default: {BATCH}")
    p.add_argument("--device", default=DEVICE, help="cpu, 0, 0,1 ... (default: GPU 0 if present, else cpu)")
    p.add_argument("--workers", type=int, default=WORKERS, help=f"default: {WORKERS}")
    p.add_argument("--project", default=PROJECT, help="runs folder (default: runs/detect)")
    p.add_argument("--name", default=NAME, help="run name (default: train, train2, ...)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="LAST_PT",
                   help="continue an interrupted run: its weights/last.pt, or nothing for the latest run")
    p.add_argument("--pretrained", action="append", metavar="SOURCE",
                   help="pretrained weights to start from, repeatable: a timm/torchvision state-dict file for the "
                        "backbone, 'timm'/'torchvision', or an Ultralytics checkpoint (yolo11n.pt) for neck and head")
    p.add_argument("--freeze-backbone", type=int, default=FREEZE_BACKBONE, metavar="N",
                   help=f"freeze the backbone for the first N epochs (default: {FREEZE_BACKBONE})")
    p.add_argument("--seed", type=int, default=SEED, help=f"default: {SEED}")
    p.add_argument("--no-plots", dest="plots", action="store_false", default=PLOTS, help="skip plots")
    p.add_argument("--skip-bad-images", action="store_true", default=SKIP_BAD_IMAGES,
                   help="跳过无法解码的图片继续训练 | train without the images that do not decode "
                        "(default: stop and list them)")
    args = p.parse_args(argv)
    if args.pretrained is None and PRETRAINED:
        args.pretrained = [PRETRAINED] if isinstance(PRETRAINED, (str, Path)) else list(PRETRAINED)
    return args


def fail(message: str) -> None:
    """One line on stderr and a non-zero exit: no traceback for mistakes the user can fix."""
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def model_not_found_message(model: str) -> str:
    """One line (Chinese, then English) naming the missing model and the closest real names."""
    from ultralytics_addmodules.messages import bilingual
    from ultralytics_addmodules.model_yamls import suggest_model_names

    close = ", ".join(suggest_model_names(model))
    if close:
        return bilingual(f"找不到模型 {model}；你是不是想用：{close}", f"model not found: {model}; did you mean: {close}")
    return bilingual(
        f"找不到模型 {model}；有效值：yaml/ 中的文件名、Ultralytics 自带的 YAML（如 yolo11n.yaml）或已有的 .pt 文件",
        f"model not found: {model}; valid: a file name from yaml/, an Ultralytics YAML (e.g. yolo11n.yaml) "
        "or an existing .pt file",
    )


def default_device() -> str:
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def run_checkpoints(project: str | None) -> list[Path]:
    """Every run's last*.pt under the runs folder (as Ultralytics' own resume searches), newest first."""
    search = Path(project) if project else Path("runs")
    found = search.rglob("last*.pt") if search.is_dir() else []
    return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def progress_of(last: Path) -> tuple[int, int] | None:
    """(epochs done, planned) of an interrupted run; None when it finished. Loading errors are one line."""
    from ultralytics_addmodules.checkpoints import load_state, training_progress

    return training_progress(load_state(last))


def finished_line(last: Path, older: Path | None) -> str:
    from ultralytics_addmodules.messages import bilingual

    zh = f"--resume：{last} 的训练已经完成，没有可以继续的；用它开始新的训练：python train.py --model {last.with_name('best.pt')}"
    en = (f"--resume: the run of {last} has finished, there is nothing to resume; start a new training from it: "
          f"python train.py --model {last.with_name('best.pt')}")
    if older is not None:
        zh += f"；要继续更早中断的训练：python train.py --resume {older}"
        en += f"; to continue an older interrupted run: python train.py --resume {older}"
    return bilingual(zh, en)


def pick_resume_checkpoint(project: str | None) -> tuple[Path, tuple[int, int]]:
    """The newest run whose last.pt loads; one line (not a traceback) if it finished or none loads."""
    from ultralytics_addmodules.checkpoints import CHECKPOINT_ERRORS
    from ultralytics_addmodules.messages import bilingual

    candidates = run_checkpoints(project)
    search = (Path(project) if project else Path("runs")).resolve()
    if not candidates:
        fail(f"--resume: no weights/last.pt found under {search}; pass the path of one")
    for k, last in enumerate(candidates):
        try:
            progress = progress_of(last)
        except CHECKPOINT_ERRORS as e:
            print(f"train.py: warning: {bilingual(f'跳过 {last}', f'skipping {last}')}: {e}", file=sys.stderr)
            continue
        if progress is not None:
            return last, progress
        older = None  # an interrupted run older than the finished one, to name in the hint
        for candidate in candidates[k + 1:k + 11]:
            try:
                if progress_of(candidate) is not None:
                    older = candidate
                    break
            except CHECKPOINT_ERRORS:
                continue
        fail(finished_line(last, older))
    fail(f"--resume: none of the {len(candidates)} last.pt files under {search} loads; pass the path of one")


def resume(args: argparse.Namespace) -> None:
    """Continue an interrupted run with the settings it was started with (Ultralytics keeps them)."""
    from ultralytics import YOLO

    from ultralytics_addmodules.checkpoints import CHECKPOINT_ERRORS
    from ultralytics_addmodules.messages import bilingual
    from ultralytics_addmodules.training import restore_freeze_backbone

    if args.resume == "latest":
        last, progress = pick_resume_checkpoint(args.project)
    else:
        last = Path(args.resume)
        if not last.is_file():
            fail(f"--resume: checkpoint not found: {last.resolve()}")
        try:
            progress = progress_of(last)
        except CHECKPOINT_ERRORS as e:
            fail(f"--resume: {e}")
        if progress is None:
            fail(finished_line(last, None))
    done, planned = progress
    print(bilingual(f"继续训练 {last}（已完成 {done}/{planned} 轮）", f"resuming {last} ({done} of {planned} epochs done)"))
    model = YOLO(str(last))
    restore_freeze_backbone(model, last)  # the run's --freeze-backbone setting
    model.train(resume=True, device=args.device or default_device())


# --- the dataset check (python -m ultralytics_addmodules check runs the same) --------------------------
DEMO_EPOCHS = 20  # the quick demo's schedule (EPOCHS above as shipped): far too short for real data
USUAL_IMGSZ = 640  # Ultralytics' default image size


def fail_lines(lines: list[str]) -> None:
    """Every problem on its own line on stderr, then a non-zero exit."""
    for line in lines:
        print(f"train.py: error: {line}", file=sys.stderr)
    sys.exit(2)


def dataset_warnings(summary, args: argparse.Namespace) -> list[str]:
    """Settings that do not fit the dataset: images much larger than --imgsz, the demo's epochs on other data."""
    from ultralytics_addmodules.dataset_check import format_problems
    from ultralytics_addmodules.messages import bilingual

    lines = format_problems(summary.warnings)
    side = summary.splits["train"].median_long_side
    if side and side >= 2 * args.imgsz and args.imgsz < USUAL_IMGSZ:
        lines.append(bilingual(
            f"训练图片的长边中位数是 {side} 像素，--imgsz 只有 {args.imgsz}：图片会缩小到 1/{side // args.imgsz}，小目标会看不清；"
            f"真实数据通常用 --imgsz {USUAL_IMGSZ}（或改 train.py 里的 IMGSZ）",
            f"training images are {side} px (median longest side) but --imgsz is {args.imgsz}: images shrink "
            f"{side // args.imgsz}x and small objects get lost; real data usually trains at --imgsz {USUAL_IMGSZ} "
            f"(or IMGSZ in train.py)"))
    if not summary.is_demo and args.epochs == DEMO_EPOCHS:
        lines.append(bilingual(
            f"这不是示例数据集，但训练轮数还是示例的 {DEMO_EPOCHS} 轮；真实数据通常需要 100-300 轮（--epochs 或 train.py 里的 EPOCHS）",
            f"this is not the sample dataset but the epochs are still the demo's {DEMO_EPOCHS}; real data usually "
            f"needs 100-300 (--epochs, or EPOCHS in train.py)"))
    return lines


def check_data(args: argparse.Namespace, task: str | None = None) -> Path:
    """Run the full dataset check; stop with every problem listed, or return the data YAML to train on."""
    from ultralytics_addmodules.dataset_check import DatasetError, check_dataset, format_problems
    from ultralytics_addmodules.messages import bilingual

    try:
        summary = check_dataset(args.data, task=task, skip_bad_images=args.skip_bad_images)
    except DatasetError as e:
        for line in format_problems(e.warnings):  # e.g. the sample's class names left in place: often the cause
            print(f"train.py: warning: {line}", file=sys.stderr)
        lines = e.lines()
        if e.corrupt_images:
            lines.append(bilingual("加上 --skip-bad-images 可以跳过无法解码的图片继续训练",
                                   "add --skip-bad-images to train without the images that do not decode"))
        fail_lines(lines)
    print(summary)
    for line in dataset_warnings(summary, args):
        print(f"train.py: warning: {line}", file=sys.stderr)
    if summary.bad_images:
        data = summary.without_bad_images()
        print(bilingual(f"跳过 {len(summary.bad_images)} 张无法解码的图片，训练用 {data}",
                        f"skipping {len(summary.bad_images)} images that do not decode; training on {data}"))
        return data
    return summary.yaml_file


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ultralytics_addmodules  # noqa: F401  (teaches Ultralytics the new modules, if not yet done)
    from ultralytics import YOLO

    if args.resume:
        return resume(args)

    from ultralytics_addmodules.checkpoints import CHECKPOINT_ERRORS
    from ultralytics_addmodules.weights import WeightsError

    try:
        model = YOLO(args.model)
    except WeightsError as e:  # a weights source written in the model YAML
        fail(str(e))
    except FileNotFoundError:
        fail(model_not_found_message(args.model))
    except ultralytics_addmodules.ModelYAMLError as e:  # already one line naming the layer and the bad value
        fail(f"{args.model}: {e}")
    except CHECKPOINT_ERRORS as e:  # a .pt that is refused, damaged or needs something not installed
        fail(f"--model {args.model}: {e}")
    data = check_data(args, task=model.task)  # labels are checked in the format of the model's task
    if args.pretrained:
        try:  # also the starting point of model.train() below
            ultralytics_addmodules.load_pretrained(model, args.pretrained)
        except WeightsError as e:
            fail(f"--pretrained {' '.join(map(str, args.pretrained))}: {e}")
    if args.freeze_backbone:
        from ultralytics_addmodules.training import freeze_backbone

        try:
            freeze_backbone(model, args.freeze_backbone)
        except ValueError as e:
            fail(f"--freeze-backbone: {e}")

    model.train(
        data=str(data),  # absolute: Ultralytics then finds the dataset from any directory
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device or default_device(),
        workers=args.workers,
        project=args.project,
        name=args.name,
        seed=args.seed,
        plots=args.plots,
    )


if __name__ == "__main__":
    main()
