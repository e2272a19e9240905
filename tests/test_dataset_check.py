"""The dataset check: one test per mistake users really make, each reported as one bilingual line naming the file."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import REPO, make_tiny_dataset

from ultralytics_addmodules import __main__ as cli
from ultralytics_addmodules import dataset_check, image_check
from ultralytics_addmodules.dataset_check import DatasetError, check_dataset, format_problems, quick_check

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own verdict cache: no test depends on another's warmed cache."""
    monkeypatch.setenv("ULTRALYTICS_ADDMODULES_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A valid 2-class dataset (3 train / 2 val images of 32 px); tests copy it before breaking it."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=3, n_val=2, imgsz=32).parent


@pytest.fixture
def ds(tiny, tmp_path) -> Path:
    """A private copy of ``tiny``; returns its data YAML (no 'path:' key: the root is the YAML's folder)."""
    root = tmp_path / "ds"
    shutil.copytree(tiny, root)
    write_yaml(root / "data.yaml", {0: "class0", 1: "class1"})
    return root / "data.yaml"


def write_yaml(path: Path, names: dict, extra: str = "", encoding: str = "utf-8") -> None:
    lines = ["train: train/images", "val: val/images", extra, "names:"] + [f"  {i}: {n}" for i, n in names.items()]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def train_label(data_yaml: Path, index: int = 0) -> Path:
    return sorted((data_yaml.parent / "train" / "labels").glob("*.txt"))[index]


def truncate(image: Path) -> None:
    """Cut the file in half, as an interrupted copy or download leaves it."""
    data = image.read_bytes()
    image.write_bytes(data[:len(data) // 2])


def errors_of(data_yaml: Path, **kwargs) -> list:
    with pytest.raises(DatasetError) as info:
        check_dataset(data_yaml, **kwargs)
    return info.value.problems


def assert_one_bilingual_line(text: str, *fragments: str) -> None:
    assert "\n" not in text and " | " in text, text
    zh, en = text.split(" | ", 1)
    assert CJK.search(zh), f"no Chinese before the English: {text}"
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


# --- classes.txt and names --------------------------------------------------------------------------------
def test_classes_txt_with_another_count_stops_with_its_path(ds):
    classes_txt = ds.parent / "train" / "labels" / "classes.txt"
    classes_txt.write_text("cat\ndog\nbird\n")
    (problem,) = errors_of(ds)
    assert problem.kind == "classes-txt"
    assert_one_bilingual_line(str(problem), str(classes_txt), "lists 3 classes (cat, dog, bird)", "names: 2")


def test_classes_txt_in_another_order_names_the_line(ds):
    write_yaml(ds, {0: "cat", 1: "dog"})
    classes_txt = ds.parent / "val" / "labels" / "classes.txt"
    classes_txt.write_text("dog\ncat\n")
    (problem,) = errors_of(ds)
    assert_one_bilingual_line(str(problem), f"{classes_txt}:1:", "'dog' but names: id 0 is 'cat'")


def test_classes_txt_translated_names_only_warn(ds):
    write_yaml(ds, {0: "猫", 1: "狗"})
    (ds.parent / "train" / "labels" / "classes.txt").write_text("cat\ndog\n")
    summary = check_dataset(ds, verify_images=False)
    assert [p.kind for p in summary.warnings] == ["classes-txt"]
    assert (ds.parent / "train" / "labels" / "classes.txt").read_text() == "cat\ndog\n"  # nothing rewritten


def test_gbk_classes_txt_is_read_for_the_comparison(ds):
    write_yaml(ds, {0: "猫", 1: "狗"})
    (ds.parent / "train" / "labels" / "classes.txt").write_bytes("猫\n狗\n".encode("gbk"))
    assert check_dataset(ds, verify_images=False).warnings == []


def test_demo_names_with_other_images_warn(ds):
    write_yaml(ds, {0: "circle", 1: "square", 2: "triangle"})
    summary = check_dataset(ds, verify_images=False)
    (warning,) = summary.warnings
    assert warning.kind == "demo-names" and not summary.is_demo
    assert_one_bilingual_line(str(warning), str(ds), "circle/square/triangle")


def test_demo_names_with_the_demos_images_do_not_warn(tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(REPO / "dataset", copy, ignore=shutil.ignore_patterns("*.cache"))
    summary = check_dataset(copy / "data.yaml", verify_images=False)
    assert summary.is_demo and summary.warnings == []


# --- images -----------------------------------------------------------------------------------------------
def test_truncated_jpeg_is_listed_and_skip_bad_images_leaves_it_out(ds):
    image = sorted((ds.parent / "train" / "images").glob("*.jpg"))[1]
    truncate(image)
    (problem,) = errors_of(ds)
    assert problem.kind == "image-corrupt"
    assert_one_bilingual_line(str(problem), str(image), "does not decode")
    assert check_dataset(ds, verify_images=False).splits["train"].images == 3  # the cheap part opens no image

    summary = check_dataset(ds, skip_bad_images=True)
    assert summary.bad_images == [str(image)] and [p.kind for p in summary.warnings] == ["image-corrupt"]
    without = summary.without_bad_images()
    assert not without.is_relative_to(ds.parent)  # nothing written into the dataset
    listed = (without.parent / "train.txt").read_text().split()
    assert str(image) not in listed and len(listed) == 2
    assert check_dataset(without).splits["train"].images == 2  # the written YAML is itself a valid dataset


def test_split_with_no_usable_image_says_so(ds):
    for image in (ds.parent / "train" / "images").glob("*.jpg"):
        truncate(image)
    problems = errors_of(ds, skip_bad_images=True)  # skipping cannot help: nothing would be left
    (problem,) = [p for p in problems if p.kind == "no-usable-image"]
    assert_one_bilingual_line(str(problem), str(ds), "'train:' has no usable image", "all 3 images")


def test_all_labels_bad_is_a_split_without_usable_image_in_the_quick_check(ds):
    for label in (ds.parent / "train" / "labels").glob("*.txt"):
        label.write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DatasetError) as info:
        quick_check(str(ds))
    assert [p.kind for p in info.value.problems] == ["no-usable-image"]


def test_verdict_cache_makes_the_second_run_decode_nothing(ds, tmp_path):
    images = sorted(str(p) for p in ds.parent.rglob("*.jpg"))
    first, second, third = image_check.VerifyStats(), image_check.VerifyStats(), image_check.VerifyStats()
    image_check.verify_images(images, cache_key=ds, stats=first)
    verdicts = image_check.verify_images(images, cache_key=ds, stats=second)
    assert (first.decoded, second.decoded, second.cached) == (5, 0, 5)
    truncate(Path(images[0]))  # new size: decoded again, found broken
    verdicts = image_check.verify_images(images, cache_key=ds, stats=third)
    assert third.decoded == 1 and not verdicts[images[0]].ok and verdicts[images[1]].ok
    assert image_check.verdict_cache_file(ds).is_relative_to(tmp_path / "cache")


def test_process_pool_gives_the_same_verdicts(tmp_path):
    from PIL import Image

    folder = tmp_path / "many"
    folder.mkdir()
    n = image_check.POOL_MIN_IMAGES
    for i in range(n):
        Image.new("RGB", (16, 12), (i % 255, 0, 0)).save(folder / f"{i}.png")
    bad = folder / "7.png"
    truncate(bad)
    images = sorted(str(p) for p in folder.iterdir())
    stats = image_check.VerifyStats()
    pooled = image_check.verify_images(images, workers=2, stats=stats, progress=False)
    serial = image_check.verify_images(images, workers=1, progress=False)
    assert stats.workers == 2 and stats.decoded == n
    assert pooled == serial
    assert [p for p, v in pooled.items() if not v.ok] == [str(bad)]
    assert pooled[images[0]] == image_check.Verdict(True, 16, 12)


# --- label lines --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line", ["0 nan 0.5 0.2 0.2", "0 0.5 inf 0.2 0.2", "0 0.5 0.5 -0.2 0.2", "0 0.5 0.5 0.2 NaN"])
def test_nan_inf_negative_values_name_file_and_line(ds, line):
    label = train_label(ds)
    label.write_text("1 0.5 0.5 0.2 0.2\n" + line + "\n")
    (problem,) = errors_of(ds, verify_images=False)
    text = "NaN or infinite" if "nan" in line.lower() or "inf" in line else "negative value"
    assert_one_bilingual_line(str(problem), f"{label}:2:", text, line)


@pytest.mark.parametrize(
    ("task", "extra", "good", "bad"),
    [
        ("detect", "", ["0 0.5 0.5 0.2 0.2", "0 0.1 0.1 0.4 0.1 0.3 0.5 0.2 0.6"],
         ["0 0.5 0.5 0.2", "0 0.5 0.5 0.2 0.2 0.1", "0 0.1 0.1 0.4 0.1 0.3 0.5 0.2"]),
        ("segment", "", ["0 0.1 0.1 0.4 0.1 0.3 0.5"], ["0 0.5 0.5 0.2 0.2", "0 0.1 0.1 0.4 0.1 0.3 0.5 0.2"]),
        ("pose", "kpt_shape: [2, 3]", ["0 0.5 0.5 0.2 0.2 0.4 0.4 2 0.6 0.6 0"], ["0 0.5 0.5 0.2 0.2 0.4 0.4 2"]),
        ("pose", "kpt_shape: [2, 2]", ["0 0.5 0.5 0.2 0.2 0.4 0.4 0.6 0.6"], ["0 0.5 0.5 0.2 0.2 0.4 0.4 2 0.6 0.6 0"]),
        ("obb", "", ["1 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5"],
         ["1 0.5 0.5 0.2 0.2", "1 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5 0.2 0.3"]),
    ],
)
def test_field_counts_per_task(ds, task, extra, good, bad):
    write_yaml(ds, {0: "class0", 1: "class1"}, extra)
    labels = sorted(ds.parent.rglob("labels/*.txt"))
    for i, label in enumerate(labels):  # one kind of line per file (mixing boxes and polygons has its own test)
        label.write_text(good[i % len(good)] + "\n")
    assert check_dataset(ds, task=task, verify_images=False).splits["train"].objects == 3
    for line in bad:
        labels[1].write_text(line + "\n")
        (problem,) = errors_of(ds, task=task, verify_images=False)
        n = len(line.split())
        expected = "this is a box" if task == "segment" and n == 5 else f"got {n} fields"
        assert_one_bilingual_line(str(problem), f"{labels[1]}:1:", expected)


def test_pose_without_kpt_shape_says_what_to_add(ds):
    (problem,) = errors_of(ds, task="pose", verify_images=False)
    assert_one_bilingual_line(str(problem), str(ds), "kpt_shape: [keypoints, 2 or 3]")


def test_boxes_and_polygons_mixed_in_one_file(ds):
    label = train_label(ds, 1)
    label.write_text("0 0.1 0.1 0.4 0.1 0.3 0.5\n1 0.5 0.5 0.2 0.2\n")
    (problem,) = errors_of(ds, verify_images=False)
    assert problem.kind == "label-wrong"
    assert_one_bilingual_line(str(problem), f"{label}:2:", "mixes boxes (line 2", "polygons (line 1)")


# --- the data YAML ------------------------------------------------------------------------------------------
def test_gbk_data_yaml_says_which_encoding_and_how_to_resave(ds):
    write_yaml(ds, {0: "猫", 1: "狗"}, encoding="gbk")
    (problem,) = errors_of(ds)
    assert_one_bilingual_line(str(problem), f"{ds}:5:", "GBK/GB18030", "save it again as UTF-8")  # 1st Chinese line
    with pytest.raises(DatasetError, match="GBK"):
        quick_check(str(ds))  # YOLO.train: stock Ultralytics would silently drop the Chinese names


def test_utf16_data_yaml(ds):
    write_yaml(ds, {0: "cat", 1: "dog"}, encoding="utf-16")
    (problem,) = errors_of(ds)
    assert_one_bilingual_line(str(problem), str(ds), "UTF-16")


def test_relative_path_key_gets_the_hint_to_remove_it(ds):
    ds.write_text("path: .\n" + ds.read_text())
    problems = errors_of(ds, verify_images=False)
    assert problems and all(p.kind == "split" for p in problems)
    assert_one_bilingual_line(str(problems[0]), "folder not found", "datasets_dir", "remove 'path:'")


def test_chinese_paths_and_names_pass(tmp_path):
    root = tmp_path / "数据集" / "猫狗 数据"
    data = make_tiny_dataset(root, n_train=2, n_val=1, imgsz=32)
    write_yaml(data, {0: "猫", 1: "狗"})
    (root / "train" / "labels" / "classes.txt").write_text("猫\n狗\n", encoding="utf-8")
    summary = check_dataset(data)
    assert summary.names == ["猫", "狗"] and summary.problems == []
    assert summary.splits["train"].median_long_side == 32
    quick_check(str(data))


# --- messages ------------------------------------------------------------------------------------------------
def test_long_lists_show_the_first_few_and_a_count(ds):
    for label in sorted(ds.parent.rglob("labels/*.txt")):
        label.write_text("\n".join(["0 0.5 0.5 1.5 0.2"] * 3) + "\n")
    problems = errors_of(ds, verify_images=False)
    lines = format_problems(problems)
    bad_lines = [p for p in problems if p.kind == "label-line"]
    assert len(bad_lines) == 15
    assert lines[:5] == [str(p) for p in bad_lines[:5]]
    assert_one_bilingual_line(lines[5], "and 10 more bad label lines")
    assert all(CJK.search(line) for line in lines)


# --- YOLO(...).train(data=...) runs the quick check ----------------------------------------------------
def test_quick_check_leaves_what_ultralytics_resolves_itself(ds):
    assert quick_check("coco8.yaml") is None  # not a local file: Ultralytics' business
    assert quick_check({"train": "x"}) is None
    assert quick_check(str(ds), task="classify") is None
    downloadable = ds.parent / "dl.yaml"
    downloadable.write_text("train: nowhere/images\nval: nowhere/images\nnames: [a]\n"
                            "download: https://x.invalid/d.zip\n")
    assert quick_check(str(downloadable)) is None


def test_quick_check_only_warns_where_stock_ultralytics_trains_fine(ds, caplog):
    images = sorted((ds.parent / "train" / "images").glob("*.jpg"))
    os.remove(dataset_check.label_file_for(images[0]))  # a background image for Ultralytics
    train_label(ds, 1).write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 1.5 0.2\n")  # Ultralytics skips this image
    with caplog.at_level(logging.WARNING, logger="ultralytics"):
        assert quick_check(str(ds)) is None
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "image without label file" in warned and "will skip 1 images because of bad labels" in warned
    assert len(errors_of(ds, verify_images=False)) == 2  # train.py and `check` stop on both


class _Stop(Exception):
    """Raised from a callback: training got past the dataset check."""


def _stop_training(trainer):
    raise _Stop


def test_trainers_dataset_step_runs_the_quick_check(ds):
    from types import SimpleNamespace

    from ultralytics.cfg import get_cfg
    from ultralytics.engine.trainer import BaseTrainer

    (ds.parent / "val" / "labels" / "classes.txt").write_text("class1\nclass0\n")
    trainer = SimpleNamespace(args=get_cfg(overrides={"data": str(ds), "task": "detect"}))
    with pytest.raises(DatasetError, match="same classes in another order"):
        BaseTrainer.get_dataset(trainer)  # the wiring in patch.py, without building a trainer
    (ds.parent / "val" / "labels" / "classes.txt").unlink()
    result = BaseTrainer.get_dataset(trainer)  # then stock Ultralytics, unchanged
    data = getattr(trainer, "data", None) or result  # 8.3 keeps it and returns (train, val); 8.4 returns it
    assert Path(data["train"]) == ds.parent / "train" / "images" and data["names"] == {0: "class0", 1: "class1"}


@pytest.mark.slow
def test_yolo_train_runs_the_quick_check(ds, tmp_path):
    from ultralytics import YOLO

    (ds.parent / "train" / "labels" / "classes.txt").write_text("a\nb\nc\n")
    model = YOLO("yolo11n.yaml")
    with pytest.raises(DatasetError, match="classes.txt lists 3 classes"):
        model.train(data=str(ds), epochs=1, imgsz=32, device="cpu", project=str(tmp_path / "runs"), plots=False)

    (ds.parent / "train" / "labels" / "classes.txt").write_text("class0\nclass1\n")  # fixed: training starts
    model.add_callback("on_pretrain_routine_start", _stop_training)
    with pytest.raises(_Stop):
        model.train(data=str(ds), epochs=1, imgsz=32, device="cpu", project=str(tmp_path / "runs"), plots=False)


# --- python -m ultralytics_addmodules check ----------------------------------------------------------------
def test_check_command_passes_a_good_dataset_and_writes_its_files(ds, tmp_path, capsys):
    code = cli.main(["check", str(ds), "--project", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0, out
    run_dir = tmp_path / "runs" / "1"
    assert "| train | 3 | 6 |" in out and "dataset check passed" in out and "数据集检查通过" in out
    assert (run_dir / "summary.md").read_text(encoding="utf-8").count("| val | 2 |") == 1
    assert (run_dir / "problems.txt").read_text() == ""


def test_check_command_lists_problems_and_exits_1(ds, tmp_path, capsys):
    image = sorted((ds.parent / "val" / "images").glob("*.jpg"))[0]
    truncate(image)
    code = cli.main(["check", str(ds), "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 1
    assert_one_bilingual_line(err.splitlines()[0], str(image), "does not decode")
    assert str(image) in (tmp_path / "runs" / "1" / "problems.txt").read_text(encoding="utf-8")
    code = cli.main(["check", str(ds), "--skip-bad-images", "--project", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0 and "dataset check passed" in out
    written = tmp_path / "runs" / "2" / "data.yaml"
    assert str(image) not in (written.parent / "val.txt").read_text()
    assert check_dataset(written).splits["val"].images == 1


def test_check_command_bad_input_and_help(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "missing.yaml")]) == 2
    assert_one_bilingual_line(capsys.readouterr().err.strip(), "missing.yaml", "data YAML not found")
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--skip-bad-images" in help_text and "检查 YOLO 数据集" in help_text and "Check a YOLO dataset" in help_text


def test_cache_folder_is_the_users_not_the_datasets(monkeypatch, tmp_path):
    monkeypatch.delenv("ULTRALYTICS_ADDMODULES_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert image_check.cache_dir() == tmp_path / "xdg" / "ultralytics-addmodules"
    monkeypatch.setenv("ULTRALYTICS_ADDMODULES_CACHE_DIR", str(tmp_path / "mine"))
    assert image_check.verdict_cache_file("/x/data.yaml").parent == tmp_path / "mine" / "image-verdicts"


def test_progress_bar_only_on_large_sets(ds, capsys):
    images = sorted(str(p) for p in ds.parent.rglob("*.jpg"))
    image_check.verify_images(images)
    assert "verifying images" not in capsys.readouterr().err  # 5 images: no bar
    image_check.verify_images(images, progress=True)  # what a set of PROGRESS_MIN_IMAGES or more gets
    assert "检查图片 | verifying images" in capsys.readouterr().err


def test_what_stock_ultralytics_accepts_still_passes(ds):
    """String ids in names:, hidden macOS copies (._x.jpg), images in sub-folders, a 'validation:' key."""
    ds.write_text("train: train/images\nvalidation: val/images\nnames:\n  '0': class0\n  '1': class1\n")
    (ds.parent / "train" / "images" / "._000.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    sub = ds.parent / "train" / "images" / "more"
    sub.mkdir()
    shutil.copy(ds.parent / "train" / "images" / "000.jpg", sub / "extra.jpg")
    (ds.parent / "train" / "labels" / "more").mkdir()
    (ds.parent / "train" / "labels" / "more" / "extra.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    summary = check_dataset(ds)
    assert summary.names == ["class0", "class1"] and summary.problems == []
    assert summary.splits["train"].images == 4 and summary.splits["val"].images == 2
    quick_check(str(ds))
