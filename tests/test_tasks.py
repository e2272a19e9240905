"""Past detection: the shipped segment / pose / OBB / classify YAMLs and the generator's tiny task datasets.

Fast tests check names, heads and the generated labels; the slow ones train one epoch per task from a
shipped YAML and predict with its best.pt in a fresh process.
"""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, fresh_python

from ultralytics_addmodules.model_yamls import list_model_yamls

sys.path.insert(0, str(REPO / "scripts"))
import make_dataset  # noqa: E402

TASK_OF_TOKEN = {"seg": "segment", "pose": "pose", "obb": "obb", "cls": "classify"}
HEAD_OF_TASK = {"segment": "Segment", "pose": "Pose", "obb": "OBB", "classify": "Classify"}
MODEL_CLASS = {
    "segment": "SegmentationModel", "pose": "PoseModel", "obb": "OBBModel", "classify": "ClassificationModel",
}
BACKBONES = ("MobileNetV4", "EfficientNetV2")
TASK_YAMLS = [f"yolo11-{token}-{b}.yaml" for token in TASK_OF_TOKEN for b in BACKBONES]


def scaled(name: str) -> str:
    return name.replace("yolo11-", "yolo11n-", 1)


def test_task_yamls_are_shipped_and_listed_by_task():
    assert set(TASK_YAMLS) <= {p.name for p in list_model_yamls()}
    for token, task in TASK_OF_TOKEN.items():
        assert {p.name for p in list_model_yamls(task)} == {f"yolo11-{token}-{b}.yaml" for b in BACKBONES}
    detect = {p.name for p in list_model_yamls("detect")}
    assert "yolo11-MobileNetV4.yaml" in detect and not detect & set(TASK_YAMLS)


@pytest.mark.parametrize("name", TASK_YAMLS)
def test_task_is_guessed_alike_from_file_name_and_head(name):
    from ultralytics.nn.tasks import guess_model_task

    expected = TASK_OF_TOKEN[name.split("-")[1]]
    cfg = yaml.safe_load((REPO / "yaml" / name).read_text())
    assert cfg["head"][-1][2] == HEAD_OF_TASK[expected]
    assert guess_model_task(cfg) == expected  # from the head (what YOLO("x.yaml") uses)
    assert guess_model_task(scaled(name)) == expected  # from the file name (exported / renamed models)
    assert guess_model_task(name) == expected
    if expected == "classify":  # Classify reads the backbone's P5 (layer 4 after the line expansion)
        assert len(cfg["backbone"]) == 1 and cfg["head"][-1][0] == -1
    else:  # the neck and head are yolo11-<task>.yaml's on the P3/P4/P5 layers 2/3/4
        assert cfg["head"][-1][0] == [12, 15, 18]


@pytest.fixture(scope="module")
def built_models():
    """Every task YAML at scale n, built once for the module's fast tests (a few seconds each)."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    return {name: YOLO(scaled(name)) for name in TASK_YAMLS}


@pytest.mark.slow
@pytest.mark.parametrize("name", TASK_YAMLS)
def test_task_models_build_and_run(name, built_models):
    yolo = built_models[name]
    task = TASK_OF_TOKEN[name.split("-")[1]]
    assert yolo.task == task
    assert type(yolo.model).__name__ == MODEL_CLASS[task]
    assert type(yolo.model.model[-1]).__name__ == HEAD_OF_TASK[task]
    model = yolo.model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    if task == "classify":
        assert out.shape == (2, 1000) and torch.allclose(out.sum(1), torch.ones(2))  # eval: softmax over classes
    else:
        assert model.stride.tolist() == [8, 16, 32]
        assert out[0].shape[-1] == (8 * 8 + 4 * 4 + 2 * 2)  # one prediction per cell of P3, P4, P5


def test_classify_reads_the_backbones_p5():
    from ultralytics import YOLO

    from ultralytics_addmodules.nn.backbone import SelectFeature

    model = YOLO("yolo11-cls-MobileNetV4.yaml").model.eval()
    backbone, head = model.model[0], model.model[-1]
    assert head.i == 5 and head.f == -1
    selectors = list(model.model)[1:5]
    assert all(isinstance(s, SelectFeature) for s in selectors)
    assert head.conv.conv.in_channels == backbone.out_channels[-1]  # P5's channels
    seen = {}
    head.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(torch.rand(1, 3, 96, 64))
    assert seen["x"].shape[-2:] == (3, 2)  # stride 32


# --- the generator's task datasets ----------------------------------------------------------------------------
def generate(tmp_path: Path, task: str, **kw) -> Path:
    kw = {"n_train": 6, "n_val": 3, "size": 96, **kw}
    return make_dataset.make_task_dataset(tmp_path / task, task, **kw)


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_generated_labels_pass_ultralytics_checks(task, tmp_path):
    from ultralytics.data.utils import verify_image_label

    data = generate(tmp_path, task)
    cfg = yaml.safe_load(data.read_text())
    nkpt, ndim = cfg.get("kpt_shape", (0, 0))
    images = sorted((data.parent / "train" / "images").glob("*.jpg"))
    assert len(images) == 6
    objects = 0
    for image in images:
        label = data.parent / "train" / "labels" / f"{image.stem}.txt"
        args = (str(image), str(label), "", task == "pose", len(cfg["names"]), nkpt, ndim)
        if "single_cls" in inspect.getsource(verify_image_label):  # 8.4 takes an eighth argument
            args += (False,)
        _, lb, shape, segments, keypoints, nm, nf, ne, nc, msg = verify_image_label(args)
        assert (nm, nf, ne, nc) == (0, 1, 0, 0), msg
        assert ((lb[:, 1:5] > 0) & (lb[:, 1:5] <= 1)).all()
        objects += len(lb)
        if task == "segment":
            assert len(segments) == len(lb) and all(len(s) >= 3 for s in segments)
        if task == "pose":
            assert keypoints.shape == (len(lb), 3, 3) and (keypoints[..., 2] == 2).all()
            top, left, right = keypoints[:, 0], keypoints[:, 1], keypoints[:, 2]
            assert (left[:, 0] < right[:, 0]).all() and (top[:, 1] < left[:, 1]).all()
        if task == "obb":  # 4 corners of a rotated rectangle: equal diagonals, elongated
            corners = torch.tensor([[float(v) for v in ln.split()[1:]] for ln in label.read_text().split("\n") if ln])
            pts = corners.view(-1, 4, 2)
            torch.testing.assert_close((pts[:, 0] - pts[:, 2]).norm(dim=1), (pts[:, 1] - pts[:, 3]).norm(dim=1))
            sides = torch.stack([(pts[:, 0] - pts[:, 1]).norm(dim=1), (pts[:, 1] - pts[:, 2]).norm(dim=1)], 1)
            assert (sides.max(1).values > 2 * sides.min(1).values).all()
    assert objects > len(images)  # several objects per image on average
    if task == "pose":
        assert cfg["kpt_shape"] == [3, 3] and cfg["flip_idx"] == [0, 2, 1]


def test_generated_classify_set_is_balanced_folders(tmp_path):
    root = generate(tmp_path, "classify", n_train=9)
    assert root.is_dir()
    for split, count in (("train", 9), ("val", 3)):
        counts = {d.name: len(list(d.glob("*.jpg"))) for d in sorted((root / split).iterdir())}
        assert counts == {name: count // 3 for name in make_dataset.CLASS_NAMES}


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_generator_is_seeded(task, tmp_path):
    a, b = generate(tmp_path / "a", task), generate(tmp_path / "b", task)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.suffix != ".jpg":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = generate(tmp_path / "c", task, seed=1)
    if task == "segment":
        assert (other.parent / "train" / "labels" / "train_0000.txt").read_text() != \
            (a.parent / "train" / "labels" / "train_0000.txt").read_text()


def test_generator_never_replaces_a_folder_it_did_not_make(tmp_path):
    user = tmp_path / "user_data"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"user_data.*\|.*not made by this script"):
        make_dataset.make_task_dataset(user, "obb", 2, 1, 64)
    assert (user / "keep.txt").read_text() == "mine" and len(list(user.iterdir())) == 1
    data = generate(tmp_path, "obb")
    assert generate(tmp_path, "obb", n_train=2) == data  # its own folder is replaced
    assert len(list((data.parent / "train" / "images").iterdir())) == 2


def test_generator_cli_errors_are_one_line(tmp_path):
    import subprocess

    script = str(REPO / "scripts" / "make_dataset.py")
    for args, fragment in (
        (["--task", "pose"], "--task pose needs --out"),
        (["--task", "depth", "--out", str(tmp_path / "d")], "unknown task 'depth'; valid: detect, segment"),
    ):
        r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and " | " in lines[0], r.stderr
    assert not (tmp_path / "d").exists()


# --- one epoch per task, then best.pt in a fresh process ------------------------------------------------------
TRAIN_CASES = [  # both backbones get trained, each task once
    ("segment", "yolo11n-seg-MobileNetV4.yaml"),
    ("pose", "yolo11n-pose-EfficientNetV2.yaml"),
    ("obb", "yolo11n-obb-MobileNetV4.yaml"),
    ("classify", "yolo11n-cls-EfficientNetV2.yaml"),
]

PREDICT = textwrap.dedent("""
    import json, sys
    from ultralytics import YOLO
    model = YOLO(sys.argv[1])
    r = model.predict(sys.argv[2], imgsz=64, conf=0.0, verbose=False)[0]
    out = {"task": model.task, "names": len(r.names)}
    if r.masks is not None:
        out["masks"] = list(r.masks.data.shape)
    if r.keypoints is not None:
        out["keypoints"] = list(r.keypoints.data.shape)
    if r.obb is not None:
        out["obb"] = list(r.obb.xywhr.shape)
    if r.probs is not None:
        out["probs"] = len(r.probs.data)
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.parametrize("task, name", TRAIN_CASES)
def test_one_epoch_then_best_pt_predicts_in_a_fresh_process(task, name, tmp_path):
    from ultralytics import YOLO

    data = generate(tmp_path, task, n_train=8, n_val=4, size=64)
    yolo = YOLO(name)
    assert yolo.task == task
    yolo.train(data=str(data), epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False,
               project=str(tmp_path / "runs"), name="run", exist_ok=True, seed=0, verbose=False)
    best = tmp_path / "runs" / "run" / "weights" / "best.pt"
    assert best.is_file()
    image = next((data.parent if task != "classify" else data).glob("val/**/*.jpg"))
    r = fresh_python(f"import sys; sys.argv[1:] = {[str(best), str(image)]!r}\n" + PREDICT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["task"] == task and out["names"] == 3
    if task == "segment":
        assert out["masks"][0] > 0 and out["masks"][1:] == [64, 64]
    if task == "pose":
        assert out["keypoints"][0] > 0 and out["keypoints"][1:] == [3, 3]  # the dataset's kpt_shape
    if task == "obb":
        assert out["obb"][0] > 0 and out["obb"][1] == 5
    if task == "classify":
        assert out["probs"] == 3
