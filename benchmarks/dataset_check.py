"""How long the dataset check takes on a 10,000-image set, against one training epoch on it.

    python benchmarks/dataset_check.py                      # 10,000 images of 640x480, yolo11n at imgsz 160
    python benchmarks/dataset_check.py --images 2000 --epoch-images 200      # a quicker run

Generates a seeded detection dataset (JPEGs with 1-3 boxes each) in a temporary folder, then measures in
one process:

- the quick check (YAML, names, classes.txt, every label line; what ``YOLO.train`` runs), median of 3;
- the full check's image verification, uncached, with 1 process and with every core, and again cached;
- training time per image: yolo11n, one epoch on ``--epoch-images`` of those images at ``--imgsz``, timed from
  the start to the end of the training epoch (no validation, no setup), extrapolated to the whole set.

Prints each time and the ratios that matter: quick check / epoch (the target is under 10 %), cached /
uncached verification, 1 process / all cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_dataset(root: Path, n: int, width: int, height: int) -> Path:
    """Seeded images (smooth background, coloured boxes) and their labels; returns the data YAML."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = (np.linspace(40, 200, width)[None, :, None] + np.linspace(0, 40, height)[:, None, None]).astype(np.uint8)
    base = np.repeat(base, 3, axis=2)
    for split, count in (("train", n - n // 10), ("val", n // 10)):
        images, labels = root / split / "images", root / split / "labels"
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for k in range(count):
            img = base + rng.integers(0, 25, (height, width, 3), dtype=np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                w, h = int(rng.integers(width // 10, width // 3)), int(rng.integers(height // 10, height // 3))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                cls = int(rng.integers(0, 3))
                img[y:y + h, x:x + w] = ((220, 40, 40), (40, 190, 60), (40, 80, 230))[cls]
                cx, cy = (x + w / 2) / width, (y + h / 2) / height
                lines.append(f"{cls} {cx:.6f} {cy:.6f} {w / width:.6f} {h / height:.6f}")
            Image.fromarray(img).save(images / f"{k:06d}.jpg", quality=90)
            (labels / f"{k:06d}.txt").write_text("\n".join(lines) + "\n")
        (labels / "classes.txt").write_text("red\ngreen\nblue\n")
    data = root / "data.yaml"
    data.write_text("train: train/images\nval: val/images\nnames:\n  0: red\n  1: green\n  2: blue\n")
    return data


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def epoch_seconds_per_image(data: Path, n_images: int, imgsz: int, batch: int, workdir: Path) -> float:
    """Seconds per training image of yolo11n: one epoch on the first ``n_images`` train images."""
    from ultralytics import YOLO

    subset = workdir / "subset"
    subset.mkdir()
    images = sorted((data.parent / "train" / "images").iterdir())[:n_images]
    (subset / "train.txt").write_text("".join(f"{p}\n" for p in images))
    sub_yaml = subset / "data.yaml"
    sub_yaml.write_text(f"train: {subset / 'train.txt'}\nval: {subset / 'train.txt'}\nnames: [red, green, blue]\n")
    marks = {}
    model = YOLO("yolo11n.yaml")
    model.add_callback("on_train_epoch_start", lambda trainer: marks.setdefault("start", time.perf_counter()))
    model.add_callback("on_train_epoch_end", lambda trainer: marks.setdefault("end", time.perf_counter()))
    model.train(data=str(sub_yaml), epochs=1, imgsz=imgsz, batch=batch, device="cpu", workers=0, val=False,
                plots=False, project=str(workdir / "runs"), name="epoch", verbose=False, amp=False)
    return (marks["end"] - marks["start"]) / n_images


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000, help="images in the generated set (default 10000)")
    p.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="image size")
    p.add_argument("--epoch-images", type=int, default=1000, help="images of the timed training epoch")
    p.add_argument("--imgsz", type=int, default=160, help="training image size (default 160)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--keep", type=Path, default=None, help="generate the set here and keep it (reused if present)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["ULTRALYTICS_ADDMODULES_CACHE_DIR"] = str(tmp / "cache")
        root = args.keep or tmp / "ds"
        data = root / "data.yaml"
        if not data.is_file():
            t = timed(lambda: make_dataset(root, args.images, *args.size))
            print(f"generated {args.images} images of {args.size[0]}x{args.size[1]} in {t:.0f} s ({root})")

        from ultralytics_addmodules import image_check
        from ultralytics_addmodules.dataset_check import check_dataset, quick_check

        summary = check_dataset(data, verify_images=False)
        files = [f for s in summary.splits.values() for f in s.image_files]
        quick = statistics.median(timed(lambda: check_dataset(data, verify_images=False)) for _ in range(3))
        quick_train = statistics.median(timed(lambda: quick_check(str(data), "detect")) for _ in range(3))
        cores = image_check.default_workers()
        uncached = {}
        for workers in (1, cores):
            key = tmp / f"key-{workers}"  # a cache file of its own: every image decoded
            uncached[workers] = timed(lambda: image_check.verify_images(files, cache_key=key, workers=workers,
                                                                          progress=False))
        cached = timed(lambda: image_check.verify_images(files, cache_key=tmp / f"key-{cores}", workers=cores))
        per_image = epoch_seconds_per_image(data, min(args.epoch_images, summary.splits["train"].images), args.imgsz,
                                            args.batch, tmp)
        epoch = per_image * summary.splits["train"].images

    n = len(files)
    print(f"images: {n} ({summary.splits['train'].images} train, {summary.splits['val'].images} val), "
          f"{os.cpu_count()} CPUs, {cores} usable, load average {os.getloadavg()[0]:.1f}")
    print(f"quick check (check_dataset verify_images=False): {quick:.2f} s ({quick / n * 1e6:.0f} us/image)")
    print(f"quick check as YOLO.train runs it (quick_check):  {quick_train:.2f} s")
    print(f"image verification, uncached, 1 process: {uncached[1]:.1f} s ({uncached[1] / n * 1e3:.2f} ms/image)")
    print(f"image verification, uncached, {cores} processes: {uncached[cores]:.1f} s "
          f"(speed-up x{uncached[1] / uncached[cores]:.2f})")
    print(f"image verification, cached: {cached:.2f} s (x{uncached[cores] / cached:.0f} faster than uncached)")
    print(f"training: {per_image * 1e3:.1f} ms/image (yolo11n, imgsz {args.imgsz}, batch {args.batch}, CPU, "
          f"{args.epoch_images}-image epoch) -> one epoch on {summary.splits['train'].images} images ~ {epoch:.0f} s")
    print(f"ratio quick check / epoch: {quick_train / epoch:.2%} (target < 10%); "
          f"full check uncached / epoch: {uncached[cores] / epoch:.1%}; cached: {(quick + cached) / epoch:.2%}")


if __name__ == "__main__":
    main()
