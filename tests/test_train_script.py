"""train.py and the dataset check it runs first: one clear line per dataset mistake, no traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, load_script, make_tiny_dataset

from ultralytics_addmodules.dataset_check import DatasetError, check_dataset, label_file_for


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny valid dataset (data YAML path); tests copy it before breaking it."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=4, n_val=2)


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy whose data YAML has no 'path:' key (root = the YAML's folder, like dataset/)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset.parent, root)
    text = (root / "data.yaml").read_text()
    (root / "data.yaml").write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("path:")) + "\n")
    return root / "data.yaml"


def run_train_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "true", "PYTHONPATH": str(REPO),
           "ULTRALYTICS_ADDMODULES_CACHE_DIR": str(cwd / "addmodules-cache")}  # verdicts stay in the test's folder
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# --- train.py as a user runs it (subprocess) -------------------------------------------------------------
def test_missing_folder_is_one_line_error(dataset_copy, tmp_path):
    shutil.rmtree(dataset_copy.parent / "val" / "images")
    result = run_train_script("--data", str(dataset_copy), "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert_one_line_error(result, "val folder not found", str(dataset_copy.parent / "val" / "images"))
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_image_without_label_is_one_line_error(dataset_copy, tmp_path):
    image = sorted((dataset_copy.parent / "train" / "images").iterdir())[1]
    label_file_for(image).unlink()
    result = run_train_script("--data", str(dataset_copy), "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert_one_line_error(result, "image without label file", str(image))


def test_class_id_out_of_range_is_one_line_error(dataset_copy, tmp_path):
    label = sorted((dataset_copy.parent / "val" / "labels").glob("*.txt"))[0]
    label.write_text(label.read_text() + "7 0.5 0.5 0.2 0.2\n")
    bad_line = len(label.read_text().splitlines())
    result = run_train_script("--data", str(dataset_copy), "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert_one_line_error(result, f"{label}:{bad_line}", "class id 7 is out of range", "valid ids 0-1")


@pytest.mark.slow
def test_missing_data_yaml_and_bad_pretrained_source(dataset_copy, tmp_path):
    result = run_train_script("--data", "no/such/data.yaml", cwd=tmp_path)
    assert_one_line_error(result, "data YAML not found", str(tmp_path / "no/such/data.yaml"))
    result = run_train_script("--data", str(dataset_copy), "--pretrained", str(tmp_path / "missing.pth"),
                              "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert_one_line_error(result, "--pretrained", "missing.pth")


def test_negative_freeze_backbone_is_one_line_error(dataset_copy, tmp_path):
    result = run_train_script("--data", str(dataset_copy), "--freeze-backbone", "-2",
                              "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert_one_line_error(result, "--freeze-backbone", "-2")
    assert not (tmp_path / "runs").exists()  # stopped before any training run was created


# --- the dataset check itself (in process, fast) --------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2", "expected 'class x_center y_center width height'"),
        ("0 0.5 0.5 0.2 zero", "not a number"),
        ("1.5 0.5 0.5 0.2 0.2", "is not a non-negative integer"),
        ("0 0.5 0.5 1.2 0.2", "normalised to 0-1"),
        ("0 0.5 0.5 0.0 0.2", "width and height must be > 0"),
        ("2 0.5 0.5 0.2 0.2", "class id 2 is out of range"),
    ],
)
def test_bad_label_lines_name_file_and_line(dataset_copy, line, message):
    label = sorted((dataset_copy.parent / "train" / "labels").glob("*.txt"))[2]
    label.write_text("0 0.5 0.5 0.2 0.2\n" + line + "\n")
    with pytest.raises(DatasetError, match=message) as info:
        check_dataset(dataset_copy)
    assert f"{label}:2:" in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_label_file_is_a_background_image(dataset_copy):
    label = sorted((dataset_copy.parent / "train" / "labels").glob("*.txt"))[0]
    label.write_text("")
    summary = check_dataset(dataset_copy)
    assert summary.splits["train"].background_images == 1
    assert summary.splits["train"].images == 4 and summary.nc == 2


def test_polygon_labels_are_accepted(dataset_copy):
    label = sorted((dataset_copy.parent / "train" / "labels").glob("*.txt"))[0]
    label.write_text("1 0.1 0.1 0.4 0.1 0.3 0.5\n")
    assert check_dataset(dataset_copy).splits["train"].objects >= 1


def test_yaml_problems(dataset_copy):
    text = dataset_copy.read_text()
    dataset_copy.write_text(text.replace("names:", "nc: 5\nnames:"))
    with pytest.raises(DatasetError, match="'nc: 5' does not match the 2 entries"):
        check_dataset(dataset_copy)
    dataset_copy.write_text(text.replace("val: val/images", ""))
    with pytest.raises(DatasetError, match="'val:' is missing"):
        check_dataset(dataset_copy)
    dataset_copy.write_text("train: [unclosed\n")
    with pytest.raises(DatasetError, match="not valid YAML"):
        check_dataset(dataset_copy)


def test_relative_path_key_that_ultralytics_would_misread(dataset_copy):
    # 'path: .' looks like "next to the YAML" but Ultralytics reads it under its datasets_dir setting
    dataset_copy.write_text("path: .\n" + dataset_copy.read_text())
    with pytest.raises(DatasetError, match="datasets_dir"):
        check_dataset(dataset_copy)


# --- train.py's main() in process ------------------------------------------------------------------------
def _import_train_script():
    module = load_script("train.py", "train_script")
    return module


# --- the full dataset check in train.py (in process: same code path, no interpreter start-up per case) -------
def truncate(image: Path) -> None:
    data = image.read_bytes()
    image.write_bytes(data[:len(data) // 2])


@pytest.fixture
def train_script(tmp_path, monkeypatch):
    monkeypatch.setenv("ULTRALYTICS_ADDMODULES_CACHE_DIR", str(tmp_path / "cache"))  # no shared verdict cache
    return _import_train_script()


def stopped_train_py(train_script, capsys, data: Path, tmp_path: Path, *extra: str) -> list[str]:
    """train.py's dataset step on ``data`` (main() runs it right after building the model; the subprocess tests
    above cover that wiring): it must stop. Returns its error lines."""
    args = train_script.parse_args(["--data", str(data), "--project", str(tmp_path / "runs"), *extra])
    with pytest.raises(SystemExit) as info:
        train_script.check_data(args, task="detect")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    return [ln[len("train.py: error: "):] for ln in err.splitlines() if ln.startswith("train.py: error: ")]


def write_names(data: Path, names: list[str], encoding: str = "utf-8") -> None:
    body = "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    data.write_bytes(f"train: train/images\nval: val/images\nnames:\n{body}".encode(encoding))


@pytest.mark.parametrize("mistake", ["classes.txt", "nan", "truncated-jpeg", "gbk-yaml", "mixed-boxes-polygons"])
def test_each_dataset_mistake_stops_train_py_with_one_chinese_line(mistake, dataset_copy, train_script, capsys,
                                                                   tmp_path):
    root = dataset_copy.parent
    label = sorted((root / "train" / "labels").glob("*.txt"))[1]
    image = sorted((root / "train" / "images").glob("*.jpg"))[1]
    named = {"classes.txt": root / "train" / "labels" / "classes.txt", "nan": f"{label}:2:", "truncated-jpeg": image,
             "gbk-yaml": f"{dataset_copy}:4:", "mixed-boxes-polygons": f"{label}:1:"}[mistake]
    if mistake == "classes.txt":
        named.write_text("cat\ndog\nbird\n")
    elif mistake == "nan":
        label.write_text("0 0.5 0.5 0.2 0.2\n0 nan 0.5 0.2 0.2\n")
    elif mistake == "truncated-jpeg":
        truncate(image)
    elif mistake == "gbk-yaml":
        write_names(dataset_copy, ["猫", "狗"], encoding="gbk")
    else:
        label.write_text("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.4 0.1 0.3 0.5\n")
    lines = stopped_train_py(train_script, capsys, dataset_copy, tmp_path)
    (line,) = [ln for ln in lines if ln.startswith(str(named))]
    assert re.search(r"[\u4e00-\u9fff]", line.split(" | ")[0]), line  # Chinese first
    assert " | " in line and "\n" not in line


def test_all_train_images_corrupt_lists_them_and_says_how_to_skip(dataset_copy, train_script, capsys, tmp_path):
    images = sorted((dataset_copy.parent / "train" / "images").glob("*.jpg"))
    for image in images:
        truncate(image)
    lines = stopped_train_py(train_script, capsys, dataset_copy, tmp_path)
    assert [ln.split(":")[0] for ln in lines[:4]] == [str(p) for p in images]
    assert "'train:' has no usable image: all 4 images" in lines[4]
    assert "--skip-bad-images" in lines[5] and "跳过" in lines[5]
    lines = stopped_train_py(train_script, capsys, dataset_copy, tmp_path, "--skip-bad-images")
    assert [ln for ln in lines if "no usable image" in ln]  # skipping every image leaves nothing to train on


@pytest.mark.slow
def test_gbk_yaml_and_all_corrupt_images_as_a_user_runs_train_py(dataset_copy, tmp_path):
    """Both used to end in a raw traceback (UnicodeDecodeError; ValueError from ultralytics/data/dataset.py)."""
    project = ["--project", str(tmp_path / "runs")]
    write_names(dataset_copy, ["猫", "狗"], encoding="gbk")
    line = assert_one_line_error(run_train_script("--data", str(dataset_copy), *project, cwd=tmp_path),
                                 f"{dataset_copy}:4:", "GBK/GB18030")
    assert "另存为 UTF-8" in line
    write_names(dataset_copy, ["猫", "狗"])
    for image in (dataset_copy.parent / "train" / "images").glob("*.jpg"):
        truncate(image)
    result = run_train_script("--data", str(dataset_copy), *project, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "'train:' has no usable image" in result.stderr and "--skip-bad-images" in result.stderr
    assert not (tmp_path / "runs").exists()


def _args(**kwargs):
    import argparse

    return argparse.Namespace(**{"imgsz": 160, "epochs": 20, **kwargs})


def test_settings_that_do_not_fit_the_data_warn(train_script, tiny_dataset):
    # tiny_dataset: 64 px images, class names class0/class1, not the sample dataset
    summary = check_dataset(tiny_dataset)
    assert summary.splits["train"].median_long_side == 64
    lines = train_script.dataset_warnings(summary, _args(imgsz=16, epochs=20))
    assert len(lines) == 2
    assert "64 px (median longest side) but --imgsz is 16" in lines[0] and "长边中位数" in lines[0]
    assert "epochs are still the demo's 20" in lines[1] and "轮" in lines[1]
    assert train_script.dataset_warnings(summary, _args(imgsz=48, epochs=100)) == []
    demo = check_dataset(REPO / "dataset" / "data.yaml")
    assert train_script.dataset_warnings(demo, _args(imgsz=160, epochs=20)) == []  # the demo as shipped


@pytest.mark.slow
def test_skip_bad_images_trains_without_them(dataset_copy, train_script, tmp_path):
    import yaml

    bad = sorted((dataset_copy.parent / "train" / "images").glob("*.jpg"))[0]
    truncate(bad)  # 3 good images left: --batch 3 keeps them in one batch (BatchNorm needs 2+ per batch)
    train_script.main(["--data", str(dataset_copy), "--model", "yolo11n.yaml", "--epochs", "1", "--imgsz", "32",
                       "--batch", "3", "--device", "cpu", "--workers", "0", "--no-plots", "--skip-bad-images",
                       "--project", str(tmp_path / "runs"), "--name", "skip"])
    run = tmp_path / "runs" / "skip"
    used = Path(yaml.safe_load((run / "args.yaml").read_text())["data"])
    assert used.is_relative_to(tmp_path / "cache")  # the list without the bad image, not the user's folder
    assert str(bad) not in (used.parent / "train.txt").read_text()
    assert (run / "results.csv").is_file()


@pytest.mark.slow
def test_chinese_paths_and_names_still_train(tmp_path):
    root = tmp_path / "我的数据" / "猫狗"
    data = make_tiny_dataset(root, n_train=4, n_val=2)
    write_names(data, ["猫", "狗"])
    (root / "train" / "labels" / "classes.txt").write_text("猫\n狗\n", encoding="utf-8")
    result = run_train_script("--data", str(data), "--model", "yolo11n.yaml", "--epochs", "1", "--imgsz", "32",
                              "--batch", "2", "--device", "cpu", "--project", str(tmp_path / "运行"), "--name", "一",
                              cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 classes (猫, 狗)" in result.stdout
    assert (tmp_path / "运行" / "一" / "results.csv").is_file()


def test_model_yaml_typo_is_one_line_error(dataset_copy, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text((REPO / "yaml" / "yolo11-MobileNetV4.yaml").read_text().replace("C2PSA", "C2PSa"))
    result = run_train_script("--model", str(bad), "--data", str(dataset_copy), "--project", str(tmp_path / "runs"),
                              cwd=tmp_path)
    assert_one_line_error(result, "typo.yaml", "'C2PSa'", "C2PSA", "layer 6")
    assert not (tmp_path / "runs").exists()
