"""The user's workflow end to end: the bundled dataset, and `python train.py` learning on it quickly."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, load_script, make_tiny_dataset

from ultralytics_addmodules.dataset_check import DatasetError, absolute_data_yaml, check_dataset

DATASET = REPO / "dataset"
QUICK_TRAINING_LIMIT_S = 600  # the README promises the quick demo in minutes on a 2-core CPU


def subprocess_env() -> dict:
    return {**os.environ, "YOLO_OFFLINE": "true", "PYTHONPATH": str(REPO)}


def test_bundled_dataset_layout_and_check():
    for split in ("train", "val"):
        assert (DATASET / split / "images").is_dir() and (DATASET / split / "labels").is_dir()
    names = yaml.safe_load((DATASET / "data.yaml").read_text())["names"]
    classes_txt = (DATASET / "train" / "labels" / "classes.txt").read_text().split()
    assert classes_txt == [names[i] for i in sorted(names)]
    summary = check_dataset(DATASET / "data.yaml")
    assert summary.root == DATASET
    assert 100 <= summary.splits["train"].images <= 200 and 30 <= summary.splits["val"].images <= 50
    assert summary.splits["val"].objects > summary.splits["val"].images  # several objects per image
    size = sum(f.stat().st_size for f in DATASET.rglob("*") if f.is_file() and f.suffix != ".cache")
    assert size < 5 * 2**20, f"bundled dataset is {size / 2**20:.1f} MB"


def test_dataset_generator_is_reproducible(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_dataset.py"), "--out", str(tmp_path / "ds")],
                   check=True, capture_output=True, timeout=120)
    committed = sorted(p.relative_to(DATASET) for p in DATASET.rglob("*") if p.suffix in {".txt", ".jpg", ".yaml"})
    regenerated = sorted(p.relative_to(tmp_path / "ds") for p in (tmp_path / "ds").rglob("*") if p.is_file())
    assert committed == regenerated
    for rel in committed:
        if rel.suffix != ".jpg":  # JPEG bytes may differ between Pillow builds; labels must not
            assert (DATASET / rel).read_text() == (tmp_path / "ds" / rel).read_text(), rel


def test_data_yaml_resolves_from_any_directory(tmp_path):
    # train.py and compare pass the absolute YAML path; Ultralytics then roots the dataset next to it
    code = (
        "import sys; from pathlib import Path; from ultralytics.data.utils import check_det_dataset;"
        "d = check_det_dataset(sys.argv[1]); "
        "assert Path(d['train']).is_dir() and Path(d['val']).is_dir(), d; print(d['nc'])"
    )
    result = subprocess.run([sys.executable, "-c", code, str(DATASET / "data.yaml")], cwd=tmp_path,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "3"


def test_absolute_data_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert absolute_data_yaml("dataset/data.yaml") == str(DATASET / "data.yaml")
    assert absolute_data_yaml("coco8.yaml") == "coco8.yaml"  # not local: left to Ultralytics
    assert absolute_data_yaml(str(DATASET / "data.yaml")) == str(DATASET / "data.yaml")


def test_yolo_cli_with_relative_data_yaml_from_repo_root(tmp_path):
    """`yolo train data=dataset/data.yaml` from the repository root finds the bundled dataset."""
    code = (
        "from pathlib import Path; import ultralytics.engine.trainer as trainer;"
        "d = trainer.check_det_dataset('dataset/data.yaml');"
        "assert Path(d['val']).resolve() == Path('dataset/val/images').resolve(), d['val']"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def read_results(run_dir: Path) -> list[dict]:
    with open(run_dir / "results.csv", newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_quick_default_training_reaches_map50(tmp_path):
    """`python train.py` with its default quick settings learns the sample dataset within minutes.

    Only the default model: the stock baseline (`--model yolo11n.yaml`) learns the same data but is not this
    package's promise, and training it doubled the suite's longest test; the override itself is checked by
    test_model_override_trains_that_model."""
    args = [sys.executable, str(REPO / "train.py"), "--project", str(tmp_path / "runs"), "--name", "quick"]
    start = time.monotonic()
    result = subprocess.run(args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                            timeout=QUICK_TRAINING_LIMIT_S + 300)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_results(tmp_path / "runs" / "quick")
    final_map50 = rows[-1]["metrics/mAP50(B)"]
    print(f"default model: {len(rows)} epochs in {elapsed:.0f} s, final mAP50 {final_map50:.3f}, "
          f"mAP50-95 {rows[-1]['metrics/mAP50-95(B)']:.3f}")
    assert final_map50 >= 0.3, f"mAP50 {final_map50:.3f} after {len(rows)} epochs"
    assert elapsed < QUICK_TRAINING_LIMIT_S, f"quick training took {elapsed:.0f} s"


@pytest.mark.slow
def test_model_override_trains_that_model(tmp_path):
    """`python train.py --model yolo11n.yaml` (the README's baseline) trains stock YOLO11n on the bundled data."""
    args = [sys.executable, str(REPO / "train.py"), "--model", "yolo11n.yaml", "--epochs", "1", "--imgsz", "32",
            "--project", str(tmp_path / "runs"), "--name", "baseline", "--no-plots"]
    result = subprocess.run(args, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "baseline"
    train_args = yaml.safe_load((run / "args.yaml").read_text())
    assert train_args["model"] == "yolo11n.yaml" and train_args["epochs"] == 1 and train_args["imgsz"] == 32
    assert len(read_results(run)) == 1


# --- docs/workflow.md: its promises, tested --------------------------------------------------------------
WORKFLOW_DOC = REPO / "docs" / "workflow.md"


def test_docs_list_every_train_py_option(capsys):
    import re

    train_script = load_script("train.py", "train_script_doc")
    with pytest.raises(SystemExit):
        train_script.parse_args(["--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]  # the usage block lists every option once
    options = set(re.findall(r"\[(--[a-z-]+)", usage)) - {"--help"}
    assert len(options) > 10, usage
    text = WORKFLOW_DOC.read_text(encoding="utf-8")
    for lead in ("全部参数：", "All options: "):
        listed = text.split(lead, 1)[1].split("`")[1].split()
        assert set(listed) == options, lead


def test_docs_error_example_is_what_the_check_prints(tmp_path):
    root = tmp_path / "data"
    data = make_tiny_dataset(root, n_train=2, n_val=4, nc=3)
    data.write_text("train: train/images\nval: val/images\nnames:\n  0: a\n  1: b\n  2: c\n")
    label = root / "val" / "labels" / "003.txt"
    label.rename(root / "val" / "labels" / "0003.txt")
    (root / "val" / "images" / "003.jpg").rename(root / "val" / "images" / "0003.jpg")
    (root / "val" / "labels" / "0003.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError) as info:
        check_dataset(data)
    printed = "train.py: error: " + str(info.value.problems[0]).replace(str(tmp_path), "")
    assert WORKFLOW_DOC.read_text(encoding="utf-8").count(f"\n{printed}\n") == 2  # Chinese and English sections


def test_offline_plots_with_ascii_names_fall_back_to_pils_font(tmp_path, monkeypatch):
    import urllib.request

    import numpy as np
    from ultralytics.utils import checks, plotting

    def refuse(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(checks, "USER_CONFIG_DIR", tmp_path)  # no Arial.ttf downloaded earlier
    annotator = plotting.Annotator(np.zeros((64, 64, 3), np.uint8), pil=True, example="abc")
    assert "Arial" not in str(getattr(annotator.font, "path", ""))
    annotator.box_label([5, 20, 50, 60], "square", color=(0, 255, 0))
    assert np.asarray(annotator.result())[:20].any()  # the label was drawn with the fallback font


def test_gpu_amp_check_offline_warns_and_goes_on(tmp_path, monkeypatch):
    """Cut the network, hand check_amp a model that says it lives on CUDA: it must warn and return True."""
    import socket

    import torch
    from ultralytics.utils import checks

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)  # where Ultralytics would download yolov8n.pt
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100")  # 8.4 asks for the GPU's name

    class CudaParameter:  # all check_amp reads of a model: its first parameter's device
        device = torch.device("cuda")

    class OnCuda(torch.nn.Module):
        def parameters(self, recurse=True):
            yield CudaParameter()

    warnings = []  # Ultralytics' logger setup differs between releases: record its warnings directly
    monkeypatch.setattr(checks.LOGGER, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    assert checks.check_amp(OnCuda()) is True
    assert any("offline" in w.lower() for w in warnings), warnings
    assert not (tmp_path / "yolov8n.pt").exists()
