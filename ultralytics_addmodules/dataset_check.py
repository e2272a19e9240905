"""Check a YOLO dataset before training: one line per problem, naming ``file[:line]``, Chinese first.

Ultralytics finds most dataset mistakes late or not at all: a label line it cannot use makes it drop the
whole image with one warning deep in the log (and when that happens to every image, training ends in a
raw ``ValueError``); a ``classes.txt`` that disagrees with ``names:`` goes unnoticed, so the model is
trained with the wrong class names; a data YAML saved as GBK loses its Chinese class names without a word.
This module walks the dataset the way Ultralytics will read it and reports each such problem as one line
(``messages.bilingual``), so that ``train.py``, ``python -m ultralytics_addmodules check`` and (with the
add-on active) ``YOLO(...).train(data=...)`` stop before training.

Two depths:

- ``quick_check`` / ``check_dataset(..., verify_images=False)``: the data YAML, folders, class names,
  ``classes.txt`` and every label line. Reads text files only; ``YOLO.train`` runs this part.
- ``check_dataset``: also decodes every image (all cores, cached; see ``image_check``), so corrupt images
  are listed, and records image sizes.

Layout rules are Ultralytics' own: ``train:``/``val:`` entries are image folders (or lists of them, or .txt
files listing images) under the dataset root; an image's label file is found by replacing the last
``/images/`` in its path with ``/labels/`` and the suffix with ``.txt``. The dataset root is the YAML's
``path:`` key; without one it is the folder that holds the YAML.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .messages import bilingual

# Image suffixes Ultralytics 8.3.0 reads (ultralytics.data.utils.IMG_FORMATS); kept here so the check
# does not depend on Ultralytics internals.
IMAGE_SUFFIXES = frozenset({"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"})
TASKS = ("detect", "segment", "pose", "obb")
SPLITS = ("train", "val")  # what training reads; a test: split is left to Ultralytics' val(split="test")
# The bundled sample dataset (scripts/make_dataset.py): its class names and image file names.
DEMO_NAMES = ("circle", "square", "triangle")
DEMO_IMAGE_STEM = re.compile(r"(train|val)_\d{4}")
SHOWN_PER_KIND = 5  # long lists: this many lines of each kind of problem, then a count

# kind -> (Chinese, English) noun for the "... and N more" line of a long list.
KINDS = {
    "yaml": ("数据 YAML 的问题", "data YAML problems"),
    "split": ("图片文件夹的问题", "image folder problems"),
    "labels-folder": ("找不到的标签文件夹", "missing labels folders"),
    "label-missing": ("没有标签文件的图片", "images without a label file"),
    "label-line": ("有错的标签行（Ultralytics 会跳过这些图片）", "bad label lines (Ultralytics skips those images)"),
    "label-wrong": ("会被 Ultralytics 读错的标签行", "label lines Ultralytics would read wrongly"),
    "label-empty-box": ("宽或高为 0 的框", "boxes of zero width or height"),
    "classes-txt": ("classes.txt 的问题", "classes.txt problems"),
    "demo-names": ("示例类别名", "sample class names"),
    "image-corrupt": ("无法解码的图片", "images that do not decode"),
    "no-usable-image": ("没有可用图片的划分", "splits without a usable image"),
}
# What YOLO(...).train only warns about (the add-on must not stop a training that stock Ultralytics runs, except
# where stock would crash or silently train on wrong labels or names): images without labels (background for
# Ultralytics), zero-size boxes (filtered later) and lines that make Ultralytics skip their image.
QUICK_CHECK_WARNS = frozenset({"labels-folder", "label-missing", "label-empty-box", "label-line"})

LOGGER = logging.getLogger("ultralytics")  # Ultralytics' logger: YOLO.train's warnings appear in its log


@dataclass(frozen=True)
class Problem:
    """One problem: where (``file[:line]``), what in Chinese and English, its kind, and whether it only warns."""

    where: str
    zh: str
    en: str
    kind: str
    warning: bool = False

    def __str__(self) -> str:
        text = bilingual(self.zh, self.en)
        return f"{self.where}: {text}" if self.where else text


def format_problems(problems: list[Problem], per_kind: int = SHOWN_PER_KIND) -> list[str]:
    """One line per problem; of each kind only the first ``per_kind``, then one line with the count."""
    by_kind: dict[str, list[Problem]] = {}
    for p in problems:
        by_kind.setdefault(p.kind, []).append(p)
    lines = []
    for kind, group in by_kind.items():
        lines += [str(p) for p in group[:per_kind]]
        if len(group) > per_kind:
            zh, en = KINDS.get(kind, ("同类问题", "problems of this kind"))
            lines.append(bilingual(f"……还有 {len(group) - per_kind} 个{zh}", f"... and {len(group) - per_kind} more {en}"))
    return lines


class DatasetError(ValueError):
    """A dataset that cannot be trained on as it is.

    ``problems`` lists every error found (``warnings`` the rest); ``str(error)`` is one line (the first
    problem, and how many more there are); ``lines()`` gives the list to print (long lists shortened).
    """

    def __init__(self, problems: list[Problem] | Problem | str, warnings: list[Problem] | None = None,
                 summary: DatasetSummary | None = None):
        if isinstance(problems, str):
            problems = [Problem("", problems, problems, "yaml")]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        self.summary = summary  # what the check found before it stopped, when it got past the data YAML
        first = str(self.problems[0]) if self.problems else "dataset error"
        more = len(self.problems) - 1
        super().__init__(first + (f" [另有 {more} 个问题 | {more} more problems]" if more else ""))

    def lines(self, per_kind: int = SHOWN_PER_KIND) -> list[str]:
        return format_problems(self.problems, per_kind)

    @property
    def corrupt_images(self) -> list[str]:
        return [p.where for p in self.problems if p.kind == "image-corrupt"]


@dataclass
class SplitSummary:
    """What was found in one split (``train`` or ``val``)."""

    images: int = 0
    objects: int = 0
    background_images: int = 0  # images whose label file is empty (allowed: "nothing to detect here")
    unlabeled_images: int = 0  # images without a label file (Ultralytics: background too)
    bad_label_images: int = 0  # images Ultralytics would drop because of a bad label line
    corrupt_images: list[str] = field(default_factory=list)  # images that do not decode (full check only)
    verified: bool = False  # images decoded (full check)
    long_sides: list[int] = field(default_factory=list)  # longest side of every decoded image, in pixels
    image_files: list[str] = field(default_factory=list)
    demo_like: bool = True  # every image has a file name of the bundled sample dataset

    @property
    def usable_images(self) -> int:
        return self.images - self.bad_label_images - len(self.corrupt_images)

    @property
    def median_long_side(self) -> int | None:
        return int(statistics.median(self.long_sides)) if self.long_sides else None


@dataclass
class DatasetSummary:
    """Result of a check: where the dataset is, its classes, per-split counts and the problems found."""

    yaml_file: Path
    root: Path
    names: list[str]
    task: str = "detect"
    content: dict = field(default_factory=dict)
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def is_demo(self) -> bool:
        """The bundled sample dataset (or a copy of it): its class names and its image file names."""
        return tuple(self.names) == DEMO_NAMES and all(s.demo_like for s in self.splits.values())

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.warning]

    @property
    def bad_images(self) -> list[str]:
        return [f for s in self.splits.values() for f in s.corrupt_images]

    def __str__(self) -> str:
        parts = [f"{split} {s.images} images / {s.objects} objects" for split, s in self.splits.items()]
        return f"dataset {self.yaml_file}: {self.nc} classes ({', '.join(self.names)}); " + ", ".join(parts)

    def without_bad_images(self, folder: str | os.PathLike | None = None) -> Path:
        """Write a data YAML for this dataset minus the images that do not decode; returns its path.

        Written to ``folder`` (default: a folder per dataset in the user cache folder, never into the
        dataset): the splits become .txt lists of the good images' absolute paths (Ultralytics finds the
        labels next to them as usual); every other key is kept, other split paths made absolute.
        """
        if folder is None:
            from .image_check import cache_dir

            digest = hashlib.sha1(str(self.yaml_file).encode("utf-8", "surrogatepass")).hexdigest()[:16]
            folder = cache_dir() / "without-bad-images" / digest
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        content = {k: v for k, v in self.content.items() if k != "path"}
        for key in ("test", "minival"):  # not checked here; still valid once 'path:' is gone
            if isinstance(content.get(key), str):
                content[key] = str((self.root / content[key]).resolve())
            elif isinstance(content.get(key), list):
                content[key] = [str((self.root / x).resolve()) for x in content[key]]
        for split, s in self.splits.items():
            bad = set(s.corrupt_images)
            listing = folder / f"{split}.txt"
            listing.write_text("".join(f + "\n" for f in s.image_files if f not in bad), encoding="utf-8")
            content[split] = str(listing)
        content["names"] = dict(enumerate(self.names))
        out = folder / "data.yaml"
        header = f"# {self.yaml_file} without the {len(self.bad_images)} images that do not decode\n"
        out.write_text(header + yaml.safe_dump(content, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return out


# --- the data YAML ----------------------------------------------------------------------------------------
def resolve_data_yaml(data: str | os.PathLike) -> Path:
    """Absolute path of a data YAML given relative to the current directory (or absolute).

    Ultralytics resolves a data YAML without ``path:`` against the YAML's folder only when it is given
    as an absolute path, so callers should pass it this function's result.
    """
    path = Path(data).expanduser()
    if not path.is_file():
        raise DatasetError(Problem(str(path.resolve()), "找不到数据 YAML 文件", "data YAML not found", "yaml"))
    if path.suffix.lower() not in {".yaml", ".yml"}:
        raise DatasetError(Problem(str(path.resolve()), "数据文件不是 YAML 文件（应为 .yaml 或 .yml）",
                                   "data file is not a YAML file (.yaml/.yml)", "yaml"))
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


def _encoding_problem(yaml_file: Path, raw: bytes, error: UnicodeDecodeError) -> Problem:
    """Ultralytics reads data YAMLs as UTF-8 and silently drops what does not decode, so Chinese class names
    saved as GBK vanish. Say which encoding it looks like and how to save it again as UTF-8."""
    line = raw[:error.start].count(b"\n") + 1
    where = f"{yaml_file}:{line}"
    how_zh = "记事本：另存为 → 编码选 UTF-8；VS Code：点右下角的编码 → 通过编码保存 → UTF-8"
    how_en = ("Notepad: Save As → Encoding UTF-8; VS Code: click the encoding in the status bar → Save with Encoding → "
              "UTF-8")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Problem(where, f"文件是 UTF-16 编码（记事本的“Unicode”），请另存为 UTF-8（{how_zh}）",
                       f"the file is UTF-16 (Notepad's 'Unicode'); save it again as UTF-8 ({how_en})", "yaml")
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        text = ""
    if re.search(r"[\u4e00-\u9fff]", text):
        first_non_ascii = next(i for i, b in enumerate(raw) if b >= 0x80)  # may come before the first UTF-8 error
        line = raw.count(b"\n", 0, first_non_ascii) + 1
        where = f"{yaml_file}:{line}"
        return Problem(where, f"文件不是 UTF-8 编码，看起来是 GBK/GB18030（中文 Windows 记事本以前的默认编码），"
                              f"Ultralytics 会丢掉其中的中文；请另存为 UTF-8（{how_zh}）",
                       f"not UTF-8: it looks like GBK/GB18030 (the old default of Notepad on Chinese Windows), whose "
                       f"Chinese Ultralytics would silently drop; save it again as UTF-8 ({how_en})", "yaml")
    byte = raw[error.start:error.start + 1].hex()
    return Problem(where, f"文件不是 UTF-8 编码（无法解码的字节 0x{byte}）；请另存为 UTF-8（{how_zh}）",
                   f"not UTF-8 (byte 0x{byte} does not decode); save it again as UTF-8 ({how_en})", "yaml")


def _load_yaml(yaml_file: Path) -> dict:
    raw = yaml_file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(_encoding_problem(yaml_file, raw, e)) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{yaml_file}:{mark.line + 1}" if mark is not None else str(yaml_file)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DatasetError(Problem(where, f"不是有效的 YAML（{problem}）", f"not valid YAML ({problem})", "yaml")) from None
    if not isinstance(data, dict):
        raise DatasetError(Problem(str(yaml_file), "应当是包含 train:、val:、names: 的映射",
                                   "expected a mapping with train:, val: and names: keys", "yaml"))
    return data


def _class_names(data: dict, yaml_file: Path) -> list[str]:
    where = str(yaml_file)
    names = data.get("names")
    if names is None:
        if "nc" not in data:
            raise DatasetError(Problem(where, "缺少 'names:'（每个类别 id 一个名字）",
                                       "'names:' is missing (list the class names, one per class id)", "yaml"))
        return [f"class_{i}" for i in range(int(data["nc"]))]
    if isinstance(names, dict):
        by_id = {_as_id(k): v for k, v in names.items()}  # Ultralytics accepts '0': too
        if None in by_id or sorted(by_id) != list(range(len(by_id))):
            shown = ", ".join(str(k) for k in names)
            raise DatasetError(Problem(where, f"'names:' 的 id 必须是 0..{len(names) - 1} 且连续，实际是 {shown}",
                                       f"'names:' ids must be 0..{len(names) - 1} without gaps, got {shown}", "yaml"))
        names = [by_id[i] for i in range(len(by_id))]
    if not isinstance(names, list) or not names:
        raise DatasetError(Problem(where, "'names:' 必须是非空列表，或 id: 名字 的映射",
                                   "'names:' must be a non-empty list or an id: name mapping", "yaml"))
    if "nc" in data and int(data["nc"]) != len(names):
        raise DatasetError(Problem(where, f"'nc: {data['nc']}' 与 'names:' 的 {len(names)} 个类别不一致",
                                   f"'nc: {data['nc']}' does not match the {len(names)} entries of 'names:'", "yaml"))
    empty = [i for i, n in enumerate(names) if n is None or not str(n).strip()]
    if empty:
        raise DatasetError(Problem(where, f"类别 {empty[0]} 没有名字（'names:' 里写成 '{empty[0]}: 名字'）",
                                   f"class {empty[0]} has no name (write '{empty[0]}: name' under 'names:')", "yaml"))
    return [str(n) for n in names]


def _as_id(key) -> int | None:
    try:
        return int(key) if str(int(key)) == str(key).strip() else None
    except (TypeError, ValueError):
        return None


def dataset_root(data: dict, yaml_file: Path) -> Path:
    """The folder that ``train:``/``val:`` are relative to, resolved as Ultralytics 8.3.0 does."""
    if not data.get("path"):
        return yaml_file.parent
    root = Path(str(data["path"])).expanduser()
    if root.is_absolute():
        return root
    # Ultralytics puts a relative 'path:' under its datasets_dir setting, not under the YAML's folder.
    from ultralytics.utils import DATASETS_DIR

    return (DATASETS_DIR / root).resolve()


def _relative_path_hint(data: dict) -> tuple[str, str]:
    """The hint for a relative ``path:`` (the folders were not found where Ultralytics looks)."""
    if not data.get("path") or Path(str(data["path"])).expanduser().is_absolute():
        return "", ""
    from ultralytics.utils import DATASETS_DIR, SETTINGS_FILE

    p = data["path"]
    return (f"；相对的 'path: {p}' 会被 Ultralytics 放到它的 datasets_dir（{DATASETS_DIR}，在 {SETTINGS_FILE} 里设置）"
            f"下面，而不是 YAML 旁边：删掉 'path:'（YAML 所在的文件夹就是根目录）或改成绝对路径",
            f"; a relative 'path: {p}' is resolved by Ultralytics under its datasets_dir ({DATASETS_DIR}, set in "
            f"{SETTINGS_FILE}), not next to the YAML: remove 'path:' (the YAML's folder is then the root) or make "
            f"it absolute")


# --- images and labels ------------------------------------------------------------------------------------
def _list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), sorted, as Ultralytics' ``glob('**/*.*')`` finds them: hidden
    files and folders (macOS' ``._x.jpg`` copies) are skipped, linked folders followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and "." in f and f.rpartition(".")[2].lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _split_images(entry: str, root: Path, yaml_file: Path, split: str, data: dict) -> tuple[list[str], Problem | None]:
    """Images of one ``train:``/``val:`` entry (a folder or a .txt list), or the problem that prevents it."""
    path = (root / entry).resolve()
    if not path.exists() and entry.startswith("../"):  # Ultralytics' own fallback for '../' entries
        path = (root / entry[3:]).resolve()
    if path.is_dir():
        files = _list_images(path)
        if files:
            return files, None
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        return [], Problem(str(path), f"{split} 文件夹里没有图片（{suffixes}）",
                           f"no images ({suffixes}) in {split} folder", "split")
    if path.is_file() and path.suffix == ".txt":
        files = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line:
                files.append(str(path.parent / line[2:]) if line.startswith("./") else line)
        files = [f for f in files if f.rpartition(".")[2].lower() in IMAGE_SUFFIXES]
        if files:
            return files, None
        return [], Problem(str(path), f"图片列表（{split}）里没有图片文件", f"image list ({split}) names no image files",
                           "split")
    hint_zh, hint_en = _relative_path_hint(data)
    return [], Problem(str(path), f"找不到 {split} 文件夹（{yaml_file} 里的 '{split}: {entry}'）{hint_zh}",
                       f"{split} folder not found (from '{split}: {entry}' in {yaml_file}){hint_en}", "split")


def label_file_for(image: str | os.PathLike) -> Path:
    """Ultralytics' rule: last '/images/' in the path becomes '/labels/', suffix becomes '.txt'."""
    return Path(_label_path(str(image)))


def _label_path(image: str) -> str:
    marker = f"{os.sep}images{os.sep}"
    if marker in image:
        head, tail = image.rsplit(marker, 1)
        image = f"{head}{os.sep}labels{os.sep}{tail}"
    return image.rpartition(".")[0] + ".txt"


@dataclass
class _LabelRules:
    """What a label line must look like for the task being trained."""

    task: str
    nc: int
    kpt_shape: tuple[int, int] | None = None

    def expected(self) -> tuple[str, str]:
        """Description of a valid line (Chinese, English)."""
        if self.task == "pose":
            k, d = self.kpt_shape
            n = 5 + k * d
            return (f"{n} 个数：类别、框 'x_center y_center width height'、{k} 个关键点 × {d} 个数（data YAML 的 "
                    f"kpt_shape: [{k}, {d}]）",
                    f"{n} numbers: class, box 'x_center y_center width height', {k} keypoints x {d} numbers (the data "
                    f"YAML's kpt_shape: [{k}, {d}])")
        if self.task == "obb":
            return ("9 个数 'class x1 y1 x2 y2 x3 y3 x4 y4'（旋转框的 4 个角点）",
                    "9 numbers 'class x1 y1 x2 y2 x3 y3 x4 y4' (the 4 corners of the rotated box)")
        if self.task == "segment":
            return ("多边形 'class x1 y1 x2 y2 x3 y3 ...'（类别 + 至少 3 个点，共奇数个且至少 7 个数）",
                    "a polygon 'class x1 y1 x2 y2 x3 y3 ...' (class + at least 3 points: an odd count of at least 7 "
                    "numbers)")
        return ("'class x_center y_center width height'（5 个数），或多边形 'class x1 y1 x2 y2 x3 y3 ...'（类别 + 至少 3 个点）",
                "'class x_center y_center width height' (5 numbers) or a polygon 'class x1 y1 x2 y2 x3 y3 ...' "
                "(class + at least 3 points)")

    def fields_ok(self, n: int) -> bool:
        if self.task == "pose":
            return n == 5 + self.kpt_shape[0] * self.kpt_shape[1]
        if self.task == "obb":
            return n == 9
        polygon = n >= 7 and n % 2 == 1
        return polygon if self.task == "segment" else (n == 5 or polygon)

    def coordinates(self, values: list[float]) -> list[float]:
        """The values that must lie in 0-1 (visibility flags of 3-number keypoints excluded)."""
        if self.task == "pose" and self.kpt_shape[1] == 3:
            kpts = values[5:]
            return values[1:5] + [v for i, v in enumerate(kpts) if i % 3 != 2]
        return values[1:]


def _line_problem(fields: list[str], rules: _LabelRules) -> tuple[str, str, str] | None:
    """What is wrong with one label line, as (kind, Chinese, English), or None."""
    shown, n = " ".join(fields), len(fields)
    if not rules.fields_ok(n):
        zh, en = rules.expected()
        if rules.task == "segment" and n == 5:  # Ultralytics would train this object without a mask
            return "label-wrong", f"这是一个框（5 个数），分割训练需要{zh}", f"this is a box (5 numbers); segment training needs {en}"
        kind = "label-wrong" if rules.task == "obb" else "label-line"
        return kind, f"应为 {zh}，实际有 {n} 个字段：'{shown}'", f"expected {en}, got {n} fields: '{shown}'"
    try:
        values = [float(v) for v in fields]
    except ValueError:
        bad = next(v for v in fields if not _is_float(v))
        return "label-line", f"'{bad}' 不是数字：'{shown}'", f"not a number: '{bad}' in '{shown}'"
    if not all(math.isfinite(v) for v in values):  # NaN compares False with everything: test it explicitly
        return "label-line", f"有 NaN 或无穷大的值：'{shown}'", f"NaN or infinite value in '{shown}'"
    cls = values[0]
    if not cls.is_integer() or cls < 0:
        return ("label-wrong", f"类别 id '{fields[0]}' 不是非负整数",
                f"class id {fields[0]!r} is not a non-negative integer")
    if cls >= rules.nc:  # (Ultralytics 8.3.0 lets id == nc through, then fails or mislabels later)
        return ("label-wrong", f"类别 id {int(cls)} 超出范围：data YAML 只有 {rules.nc} 个类别（有效 id 0-{rules.nc - 1}）",
                f"class id {int(cls)} is out of range; the data YAML has {rules.nc} classes (valid ids "
                f"0-{rules.nc - 1})")
    if min(values[1:]) < 0:
        return ("label-line", f"有负数：'{shown}'（坐标要除以图片宽高，归一化到 0-1）",
                f"negative value in '{shown}' (coordinates are normalised to 0-1 by the image width/height)")
    if max(rules.coordinates(values)) > 1:
        return ("label-line", f"坐标必须归一化到 0-1（除以图片宽高），实际是 '{shown}'",
                f"coordinates must be normalised to 0-1 (divide by image width/height), got '{shown}'")
    has_box = rules.task == "pose" or (rules.task == "detect" and n == 5)
    if has_box and (values[3] <= 0 or values[4] <= 0):
        return "label-empty-box", f"框的宽和高必须 > 0，实际是 '{shown}'", f"box width and height must be > 0, got '{shown}'"
    return None


def _check_label_text(label: str, text: str, rules: _LabelRules, problems: list[Problem]) -> tuple[int, bool]:
    """Check every line of one label file; returns (objects, whether Ultralytics would use the file as meant)."""
    objects, usable = 0, True
    box_line = polygon_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        found = _line_problem(fields, rules)
        if found:
            kind, zh, en = found
            problems.append(Problem(f"{label}:{number}", zh, en, kind))
            usable = usable and kind == "label-empty-box"  # Ultralytics keeps such an image (and drops the box)
            continue
        if rules.task == "detect":
            if len(fields) == 5:
                box_line = box_line or number
            else:
                polygon_line = polygon_line or number
        objects += 1
    if box_line and polygon_line:
        # Ultralytics treats the whole file as polygons once one line is, reading 'cx cy w h' as two points.
        problems.append(Problem(f"{label}:{box_line}",
                                f"文件里既有框（第 {box_line} 行，5 个数）又有多边形（第 {polygon_line} 行）；Ultralytics "
                                f"会把框也当成只有 2 个点的多边形读，得到错误的框；一个文件只用一种",
                                f"the file mixes boxes (line {box_line}, 5 numbers) and polygons "
                                f"(line {polygon_line}); "
                                f"Ultralytics then reads the boxes as 2-point polygons, which gives wrong boxes; use "
                                f"one kind per file", "label-wrong"))
        usable = False
    return objects, usable


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_names_file(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("gb18030", errors="replace")  # labelImg on Chinese Windows; only compared, never used
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_classes_txt(path: Path, names: list[str], problems: list[Problem]) -> None:
    """labelImg writes the class list it labelled with into the labels folder; it must match ``names:``."""
    listed = _read_names_file(path)
    if not listed:
        return
    shown_txt, shown_yaml = ", ".join(listed), ", ".join(names)
    if len(listed) != len(names):
        problems.append(Problem(str(path), f"classes.txt 有 {len(listed)} 个类别（{shown_txt}），data YAML 的 names: 有 "
                                           f"{len(names)} 个（{shown_yaml}）；标签里的类别 id 按 classes.txt 的顺序，"
                                           f"请让 names: 与它一致",
                                f"classes.txt lists {len(listed)} classes ({shown_txt}), the data YAML's names: "
                                f"{len(names)} ({shown_yaml}); label class ids follow classes.txt, so make names: "
                                f"match it", "classes-txt"))
    elif sorted(listed) == sorted(names) and listed != names:
        i = next(i for i, (a, b) in enumerate(zip(listed, names)) if a != b)
        problems.append(Problem(f"{path}:{i + 1}", f"classes.txt 第 {i + 1} 行是 '{listed[i]}'，但 names: 里 id {i} 是 "
                                                   f"'{names[i]}'：类别相同、顺序不同；标签里的 id 按 classes.txt 的顺序"
                                                   f"（{shown_txt}）",
                                f"line {i + 1} of classes.txt is '{listed[i]}' but names: id {i} is '{names[i]}': "
                                f"same classes in another order; label ids follow classes.txt ({shown_txt})",
                                "classes-txt"))
    elif listed != names:
        problems.append(Problem(str(path), f"classes.txt 的类别名（{shown_txt}）与 names:（{shown_yaml}）不同；如果是有意"
                                           f"改名（例如译成中文）可以忽略，否则请改成一致",
                                f"classes.txt names ({shown_txt}) differ from names: ({shown_yaml}); fine if you "
                                f"renamed them on purpose (e.g. translated), otherwise make them match",
                                "classes-txt", warning=True))


def _label_rules(content: dict, yaml_file: Path, task: str, nc: int) -> _LabelRules:
    if task not in TASKS:
        raise DatasetError(Problem("", f"不支持的任务 '{task}'（可选：{', '.join(TASKS)}）",
                                   f"unsupported task '{task}' (valid: {', '.join(TASKS)})", "yaml"))
    kpt_shape = None
    if task == "pose":
        shape = content.get("kpt_shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) for v in shape)
                and shape[0] > 0 and shape[1] in (2, 3)):
            raise DatasetError(Problem(str(yaml_file), f"关键点任务需要 'kpt_shape: [关键点数, 2 或 3]'，实际是 {shape!r}",
                                       f"pose training needs 'kpt_shape: [keypoints, 2 or 3]', got {shape!r}", "yaml"))
        kpt_shape = (shape[0], shape[1])
    return _LabelRules(task, nc, kpt_shape)


# --- the check --------------------------------------------------------------------------------------------
def _scan(data: str | os.PathLike, task: str | None) -> DatasetSummary:
    """The cheap part: YAML, folders, names, classes.txt and every label line (no image is opened)."""
    yaml_file = resolve_data_yaml(data)
    content = _load_yaml(yaml_file)
    names = _class_names(content, yaml_file)
    task = task or ("pose" if "kpt_shape" in content else "detect")
    rules = _label_rules(content, yaml_file, task, len(names))
    root = dataset_root(content, yaml_file)
    summary = DatasetSummary(yaml_file=yaml_file, root=root, names=names, task=task, content=content)
    problems = summary.problems
    if "val" not in content and "validation" in content:  # Ultralytics renames it
        content = summary.content = {**content, "val": content.pop("validation")}
    label_dirs: dict[str, bool] = {}  # labels folder -> exists
    for split in SPLITS:
        entries = content.get(split)
        if not entries:
            problems.append(Problem(str(yaml_file), f"缺少 '{split}:'（{split} 图片文件夹，例如 '{split}: {split}/images'）",
                                    f"'{split}:' is missing (the {split} image folder, e.g. '{split}: {split}/images')",
                                    "yaml"))
            continue
        stats = SplitSummary()
        summary.splits[split] = stats
        for entry in entries if isinstance(entries, list) else [entries]:
            images, problem = _split_images(str(entry), root, yaml_file, split, content)
            if problem:
                problems.append(problem)
                continue
            stats.image_files += images
        missing_dirs: list[str] = []
        for image in stats.image_files:
            stats.images += 1
            if stats.demo_like and not DEMO_IMAGE_STEM.fullmatch(Path(image).stem):
                stats.demo_like = False
            label = _label_path(image)
            try:
                with open(label, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except OSError:
                stats.unlabeled_images += 1
                folder = os.path.dirname(label)
                if folder not in label_dirs:
                    label_dirs[folder] = os.path.isdir(folder)
                    if not label_dirs[folder]:
                        missing_dirs.append(folder)
                if label_dirs[folder]:
                    problems.append(Problem(image, f"图片没有标签文件（应为 {label}；没有目标的图片放一个空的 .txt）",
                                            f"image without label file (expected {label}; an empty file marks an image "
                                            f"with no objects)", "label-missing"))
                continue
            label_dirs.setdefault(os.path.dirname(label), True)
            objects, usable = _check_label_text(label, text, rules, problems)
            stats.objects += objects
            stats.background_images += usable and objects == 0
            stats.bad_label_images += not usable
        # A labels folder missing next to some images may hold background images (fine for Ultralytics);
        # missing for the whole split, it is a layout mistake.
        kind = "split" if stats.unlabeled_images == stats.images else "labels-folder"
        for folder in missing_dirs:
            problems.append(Problem(folder, f"找不到 {split} 的标签文件夹（标签放在把图片路径里的 images 换成 labels 的位置）",
                                    f"{split} labels folder not found (labels go where 'images' in the image path "
                                    f"becomes 'labels')", kind))
    for folder, exists in label_dirs.items():
        classes_txt = Path(folder) / "classes.txt"
        if exists and classes_txt.is_file():
            _check_classes_txt(classes_txt, names, problems)
    if tuple(names) == DEMO_NAMES and summary.splits and not all(s.demo_like for s in summary.splits.values()):
        problems.append(Problem(str(yaml_file), "names: 还是示例数据集的 circle/square/triangle，但图片不是示例的；请写上你的类别名"
                                                "（顺序与标注工具的 classes.txt 一致）",
                                "names: are still the sample dataset's circle/square/triangle but the images are not "
                                "the sample's; write your class names (in the order of your labelling tool's "
                                "classes.txt)",
                                "demo-names", warning=True))
    return summary


def _verify(summary: DatasetSummary, progress: bool | None, workers: int | None) -> None:
    from .image_check import verify_images

    files = [f for s in summary.splits.values() for f in s.image_files]
    verdicts = verify_images(files, cache_key=summary.yaml_file, workers=workers, progress=progress)
    for stats in summary.splits.values():
        stats.verified = True
        for f in stats.image_files:
            v = verdicts[f]
            if v.ok:
                stats.long_sides.append(max(v.width, v.height))
            else:
                stats.corrupt_images.append(f)
                summary.problems.append(Problem(f, f"图片无法解码（{v.reason}），Ultralytics 会跳过它",
                                                f"image does not decode ({v.reason}); Ultralytics would skip it",
                                                "image-corrupt"))


def _check_usable(summary: DatasetSummary) -> None:
    for split, stats in summary.splits.items():
        if stats.images and stats.usable_images <= 0:
            why_zh = "无法解码或标签有错" if stats.verified else "标签有错"
            why_en = "fail to decode or have bad labels" if stats.verified else "have bad labels"
            summary.problems.append(Problem(str(summary.yaml_file), f"'{split}:' 没有可用的图片：{stats.images} 张全部{why_zh}",
                                            f"'{split}:' has no usable image: all {stats.images} images {why_en}",
                                            "no-usable-image"))


def check_dataset(data: str | os.PathLike, task: str | None = None, verify_images: bool = True,
                  skip_bad_images: bool = False, progress: bool | None = None,
                  workers: int | None = None) -> DatasetSummary:
    """Check the dataset of the data YAML ``data``; raise ``DatasetError`` listing every problem found.

    Checked: the YAML (UTF-8, valid, class names), each split's folder and images, every label line for
    ``task`` (default: ``pose`` when the YAML has ``kpt_shape``, else ``detect``), ``classes.txt`` against
    ``names:``, and (``verify_images``) that every image decodes. Warnings (``summary.warnings``) do not
    raise. ``skip_bad_images``: images that do not decode are left out (see
    ``DatasetSummary.without_bad_images``) instead of being errors, as long as every split keeps an image.
    """
    summary = _scan(data, task)
    if verify_images:
        _verify(summary, progress, workers)
    _check_usable(summary)
    if skip_bad_images:  # reported, then left out of training (DatasetSummary.without_bad_images)
        summary.problems = [replace(p, warning=True) if p.kind == "image-corrupt" else p for p in summary.problems]
    errors = [p for p in summary.problems if not p.warning]
    if errors:
        raise DatasetError(errors, summary.warnings, summary)
    return summary


def quick_check(data, task: str | None = None) -> None:
    """The cheap part of the check, for ``YOLO(...).train(data=...)``: no image is opened.

    Raises ``DatasetError`` for a dataset Ultralytics would train on wrongly or fail on late; logs a
    warning for what stock Ultralytics accepts (images without label files, sample class names, ...).
    Anything that is not a local data YAML (names Ultralytics downloads, dicts) is left to Ultralytics,
    and so is a YAML with a ``download:`` key whose folders are not there yet.
    """
    if not isinstance(data, (str, os.PathLike)) or task not in (None, *TASKS):
        return
    path = Path(absolute_data_yaml(data))
    if path.suffix.lower() not in {".yaml", ".yml"} or not path.is_file():
        return
    summary = _scan(path, task)
    if summary.content.get("download") and any(p.kind == "split" for p in summary.problems):
        return
    _check_usable(summary)
    errors = [p for p in summary.problems if not p.warning and p.kind not in QUICK_CHECK_WARNS]
    if errors:
        raise DatasetError(errors)
    warnings = [p for p in summary.problems if p.warning or p.kind in QUICK_CHECK_WARNS]
    for line in format_problems(warnings):
        LOGGER.warning(f"WARNING ⚠️ {line}")
    skipped = sum(s.bad_label_images for s in summary.splits.values())
    if skipped:
        LOGGER.warning("WARNING ⚠️ " + bilingual(
            f"Ultralytics 会因为标签有错跳过 {skipped} 张图片；python -m ultralytics_addmodules check {path} 列出全部问题",
            f"Ultralytics will skip {skipped} images because of bad labels; python -m ultralytics_addmodules check "
            f"{path} lists every problem"))


# --- command line: python -m ultralytics_addmodules check data.yaml ----------------------------------------
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m ultralytics_addmodules check")
    p.description = ("检查 YOLO 数据集：data YAML、文件夹、类别名、classes.txt、每一行标签、每一张图片（多核解码，结果缓存）。"
                     "每个问题一行，指出文件和行号。 | Check a YOLO dataset: the data YAML, folders, class names, "
                     "classes.txt, every label line and every image (decoded on all cores, verdicts cached). One line "
                     "per problem, naming the file and line.")
    p.add_argument("data", help="数据 YAML | the data YAML")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="标签格式按哪种任务检查（默认：有 kpt_shape 时 pose，否则 detect） | the task whose label format "
                        "to check (default: pose when the YAML has kpt_shape, else detect)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="无法解码的图片只警告，并写一个不含它们的 data YAML | only warn about images that do not decode "
                        "and write a data YAML without them")
    p.add_argument("--no-images", dest="images", action="store_false",
                   help="不解码图片（只做快速检查） | do not decode images (the quick check only)")
    p.add_argument("--workers", type=int, default=None,
                   help="解码图片的进程数（默认：全部 CPU 核） | processes decoding images (default: every core)")
    p.add_argument("--project", default="runs/check", help="结果文件夹的上级 | parent of the run folder (runs/check)")
    p.add_argument("--name", default=None, help="结果文件夹名（默认：下一个编号） | run folder name (default: next number)")
    return p


def _table(summary: DatasetSummary) -> str:
    from .cli import markdown_table

    rows = []
    for split, s in summary.splits.items():
        median = s.median_long_side
        rows.append([split, s.images, s.objects, s.background_images, s.unlabeled_images, s.bad_label_images,
                     len(s.corrupt_images) if s.verified else "-", median if median is not None else "-"])
    header = ["split 划分", "images 图片", "objects 目标", "background 背景", "no label 无标签", "bad labels 标签错",
              "corrupt 坏图", "median px 长边中位数"]
    return markdown_table(header, rows)


def run(args: argparse.Namespace) -> int:
    """The ``check`` subcommand: table on screen, problems.txt / summary.md (and data.yaml) in runs/check/N."""
    from .cli import fail, new_run_dir

    try:
        resolve_data_yaml(args.data)
    except DatasetError as e:
        p = e.problems[0]
        return fail("check", f"{p.where}: {p.zh}", f"{p.where}: {p.en}")
    error = None
    try:
        summary = check_dataset(args.data, task=args.task, verify_images=args.images,
                                skip_bad_images=args.skip_bad_images, workers=args.workers)
    except DatasetError as e:
        error, summary = e, e.summary
    problems = summary.problems if summary is not None else error.problems
    save_dir = new_run_dir(Path(args.project), args.name)
    (save_dir / "problems.txt").write_text("".join(f"{p}\n" for p in problems), encoding="utf-8")
    if summary is not None:
        table = _table(summary)
        (save_dir / "summary.md").write_text(f"{summary}\n\n{table}", encoding="utf-8")
        print(table, end="")
    for line in format_problems(problems):
        print(line, file=sys.stderr if error else sys.stdout)
    if error is None and summary.bad_images:
        out = summary.without_bad_images(save_dir)
        print(bilingual(f"不含 {len(summary.bad_images)} 张坏图的数据 YAML：{out}",
                        f"data YAML without the {len(summary.bad_images)} bad images: {out}"))
    n = len(error.problems) if error else 0
    verdict = (bilingual(f"发现 {n} 个问题", f"{n} problem{'s' if n > 1 else ''} found") if error
               else bilingual("数据集检查通过", "dataset check passed"))
    print(f"{verdict} ({save_dir})", file=sys.stderr if error else sys.stdout)
    return 1 if error else 0
