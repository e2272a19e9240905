"""train.py and the dataset check it runs first: one clear line per dataset mistake, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, make_tiny_dataset

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
    env = {**os.environ, "YOLO_OFFLINE": "true", "PYTHONPATH": str(REPO)}
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
