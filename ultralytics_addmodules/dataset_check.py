"""Check a YOLO detection dataset before training, with one clear message per problem.

Ultralytics discovers most dataset mistakes late (after building the model) and reports them as long
tracebacks, or silently: an image without a label file becomes a "background" image and the model learns
to detect nothing. ``check_dataset`` walks the dataset the way Ultralytics 8.3.0 will read it and raises
``DatasetError`` whose message is one line naming the bad folder or file, which ``train.py`` and
``python -m ultralytics_addmodules compare`` print instead of a traceback.

Layout rules are Ultralytics' own: the data YAML's ``train:``/``val:`` entries are image folders (or lists
of them, or .txt files listing images) under the dataset root; an image's label file is found by
replacing the last ``/images/`` in its path with ``/labels/`` and the suffix with ``.txt``. The dataset
root is the YAML's ``path:`` key; without one it is the folder that holds the YAML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Image suffixes Ultralytics 8.3.0 reads (ultralytics.data.utils.IMG_FORMATS); kept here so the check
# does not depend on Ultralytics internals.
IMAGE_SUFFIXES = frozenset({"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"})


class DatasetError(ValueError):
    """A problem with the dataset; ``str(error)`` is a single line naming the bad path."""


@dataclass
class SplitSummary:
    """What was found in one split (``train`` or ``val``)."""

    images: int = 0
    objects: int = 0
    background_images: int = 0  # images whose label file is empty (allowed: "nothing to detect here")


@dataclass
class DatasetSummary:
    """Result of a successful ``check_dataset``."""

    yaml_file: Path
    root: Path
    names: list[str]
    splits: dict[str, SplitSummary] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.names)

    def __str__(self) -> str:
        parts = [f"{split} {s.images} images / {s.objects} objects" for split, s in self.splits.items()]
        return f"dataset {self.yaml_file}: {self.nc} classes ({', '.join(self.names)}); " + ", ".join(parts)


def resolve_data_yaml(data: str | os.PathLike) -> Path:
    """Absolute path of a data YAML given relative to the current directory (or absolute).

    Ultralytics resolves a data YAML without ``path:`` against the YAML's folder only when it is given
    as an absolute path, so callers should pass it this function's result.
    """
    path = Path(data).expanduser()
    if not path.is_file():
        raise DatasetError(f"data YAML not found: {path.resolve()}")
    if path.suffix.lower() not in {".yaml", ".yml"}:
        raise DatasetError(f"data file is not a YAML file (.yaml/.yml): {path.resolve()}")
    return path.resolve()


def absolute_data_yaml(dataset):
    """``dataset`` as Ultralytics' ``check_det_dataset`` should receive it.

    A data YAML without ``path:`` has its root in its own folder only when Ultralytics is given its
    absolute path; a relative one (``yolo train data=dataset/data.yaml``) would be looked up under the
    datasets_dir setting instead. So an existing local YAML given by a relative path becomes absolute;
    anything else (absolute paths, names Ultralytics downloads, dicts) is returned unchanged.
    """
    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset)
        if path.suffix.lower() in {".yaml", ".yml"} and not path.is_absolute() and path.is_file():
            return str(path.resolve())
    return dataset


def _load_yaml(yaml_file: Path) -> dict:
    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise DatasetError(f"{yaml_file}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{yaml_file}: expected a mapping with train:, val: and names: keys")
    return data


def _class_names(data: dict, yaml_file: Path) -> list[str]:
    names = data.get("names")
    if names is None:
        if "nc" not in data:
            raise DatasetError(f"{yaml_file}: 'names:' is missing (list the class names, one per class id)")
        return [f"class{i}" for i in range(int(data["nc"]))]
    if isinstance(names, dict):
        ids = sorted(names)
        if ids != list(range(len(ids))):
            raise DatasetError(f"{yaml_file}: 'names:' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        names = [names[i] for i in ids]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{yaml_file}: 'names:' must be a non-empty list or an id: name mapping")
    if "nc" in data and int(data["nc"]) != len(names):
        raise DatasetError(f"{yaml_file}: 'nc: {data['nc']}' does not match the {len(names)} entries of 'names:'")
    return [str(n) for n in names]


def dataset_root(data: dict, yaml_file: Path) -> Path:
    """The folder that ``train:``/``val:`` are relative to, resolved as Ultralytics 8.3.0 does."""
    if not data.get("path"):
        return yaml_file.parent
    root = Path(str(data["path"])).expanduser()
    if root.is_absolute():
        return root
    # Ultralytics puts a relative 'path:' under its datasets_dir setting, not under the YAML's folder.
    from ultralytics.utils import SETTINGS_FILE, DATASETS_DIR

    resolved = (DATASETS_DIR / root).resolve()
    if not resolved.is_dir() and (yaml_file.parent / root).is_dir():
        raise DatasetError(
            f"{yaml_file}: relative 'path: {data['path']}' is resolved by Ultralytics under its datasets_dir "
            f"({DATASETS_DIR}, set in {SETTINGS_FILE}), not next to the YAML; remove 'path:' (the YAML's folder "
            f"is then the root) or make it absolute"
        )
    return resolved


def _image_files(entry: str, root: Path, yaml_file: Path, split: str) -> list[Path]:
    """Images of one ``train:``/``val:`` entry: a folder (searched recursively) or a .txt list."""
    path = (root / entry).resolve()
    if not path.exists() and entry.startswith("../"):  # Ultralytics' own fallback for '../' entries
        path = (root / entry[3:]).resolve()
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*.*")) if p.suffix[1:].lower() in IMAGE_SUFFIXES]
        if not files:
            raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {split} folder {path}")
        return files
    if path.is_file() and path.suffix == ".txt":
        files = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                files.append(path.parent / line[2:] if line.startswith("./") else Path(line))
        files = [p for p in files if p.suffix[1:].lower() in IMAGE_SUFFIXES]
        if not files:
            raise DatasetError(f"image list {path} ({split}) names no image files")
        return files
    raise DatasetError(f"{split} folder not found: {path} (from '{split}: {entry}' in {yaml_file})")


def label_file_for(image: Path) -> Path:
    """Ultralytics' rule: last '/images/' in the path becomes '/labels/', suffix becomes '.txt'."""
    marker, replacement = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if marker in text:
        head, tail = text.rsplit(marker, 1)
        text = head + replacement + tail
    return Path(text).with_suffix(".txt")


def _check_label_file(label: Path, nc: int) -> int:
    """Validate every line of one label file; return its object count."""
    objects = 0
    for number, line in enumerate(label.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{number}"
        # a box is 'class cx cy w h'; a polygon is 'class x1 y1 x2 y2 x3 y3 ...' (at least 3 points)
        if not (len(fields) == 5 or (len(fields) >= 7 and len(fields) % 2 == 1)):
            raise DatasetError(f"{where}: expected 'class x_center y_center width height' (5 numbers), "
                               f"got {len(fields)} fields: {line.strip()!r}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DatasetError(f"{where}: not a number in {line.strip()!r}") from None
        cls = values[0]
        if not cls.is_integer() or cls < 0:
            raise DatasetError(f"{where}: class id {fields[0]!r} is not a non-negative integer")
        if cls >= nc:
            raise DatasetError(f"{where}: class id {int(cls)} is out of range; the data YAML has {nc} classes "
                               f"(valid ids 0-{nc - 1})")
        coords = values[1:]
        if min(coords) < 0 or max(coords) > 1:
            raise DatasetError(f"{where}: coordinates must be normalised to 0-1 (divide by image width/height), "
                               f"got {line.strip()!r}")
        if len(fields) == 5 and (coords[2] <= 0 or coords[3] <= 0):
            raise DatasetError(f"{where}: box width and height must be > 0, got {line.strip()!r}")
        objects += 1
    return objects


def check_dataset(data: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> DatasetSummary:
    """Check the dataset described by the data YAML ``data``; raise ``DatasetError`` on the first problem.

    Checked: the YAML parses and names the classes; each split's image folder (or list) exists and holds
    images; every image has a label file (an empty one marks a background image); every label line has
    5 numbers (or is a polygon), a class id below the number of classes and coordinates within 0-1.
    """
    yaml_file = resolve_data_yaml(data)
    content = _load_yaml(yaml_file)
    names = _class_names(content, yaml_file)
    root = dataset_root(content, yaml_file)
    summary = DatasetSummary(yaml_file=yaml_file, root=root, names=names)
    for split in splits:
        entries = content.get(split)
        if not entries:
            raise DatasetError(f"{yaml_file}: '{split}:' is missing (the {split} image folder, e.g. "
                               f"'{split}: {split}/images')")
        stats = SplitSummary()
        for entry in entries if isinstance(entries, list) else [entries]:
            images = _image_files(str(entry), root, yaml_file, split)
            label_dirs_seen: set[Path] = set()
            for image in images:
                label = label_file_for(image)
                if not label.is_file():
                    if label.parent not in label_dirs_seen and not label.parent.is_dir():
                        raise DatasetError(f"{split} labels folder not found: {label.parent}")
                    raise DatasetError(f"image without label file: {image} (expected {label}; an empty file "
                                       f"marks an image with no objects)")
                label_dirs_seen.add(label.parent)
                count = _check_label_file(label, len(names))
                stats.images += 1
                stats.objects += count
                stats.background_images += count == 0
        summary.splits[split] = stats
    return summary
