"""docs/pretrained.md shows only what works: every code block in it is run here, and its tables are checked.

Training snippets run with Ultralytics' train() capped to one tiny step (1 epoch, 64 px, a generated dataset
with 2 classes) and stopped at on_train_start, where the test checks that the model being trained starts from
the loaded weights. The download snippet runs with timm's download replaced by random weights (no network here).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO, load_script, make_tiny_dataset, read_ultralytics_checkpoint, save_like_ultralytics
from ultralytics import YOLO
from ultralytics.nn.tasks import yaml_model_load

from ultralytics_addmodules import load_pretrained
from ultralytics_addmodules.nn.mobilenetv4 import MobileNetV4ConvSmall
from ultralytics_addmodules.registry import lookup

timm = pytest.importorskip("timm")
DOC = REPO / "docs" / "pretrained.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)
TRAIN_PY = "python train.py --model yolo11n-MobileNetV4-pretrained.yaml --pretrained mobilenetv4_conv_small.pth"
# Each snippet of the page, named by text only it contains; the tests below run them by these names.
SNIPPETS = {
    "download": ("python", 'timm.create_model("mobilenetv4_conv_small", pretrained=True)'),
    "imagenet": ("python", 'print(load_pretrained(model, "mobilenetv4_conv_small.pth"))'),
    "combined": ("python", 'load_pretrained(model, ["mobilenetv4_conv_small.pth", "yolo11n.pt"])'),
    "yaml line": ("yaml", "MobileNetV4ConvSmall, [1.0, weights/mobilenetv4_conv_small.pth]"),
    "report line": ("text", "yolo11n.pt (detect, 80 classes) -> neck/head by structure"),
    "train.py imagenet": ("bash", TRAIN_PY + "\n"),
    "train.py freeze": ("bash", TRAIN_PY + " --freeze-backbone 5\n"),
    "train.py combined": ("bash", TRAIN_PY + " --pretrained yolo11n.pt\n"),
}


def _sections() -> tuple[str, str]:
    zh, en = DOC.read_text(encoding="utf-8").split("\n## English\n")
    return zh, en


def snippet(name: str) -> str:
    lang, marker = SNIPPETS[name]
    found = {code for kind, code in FENCE.findall(DOC.read_text(encoding="utf-8"))
             if kind == lang and (code == marker if lang == "bash" else marker in code)}
    assert len(found) == 1, (name, found)
    return found.pop()


def test_both_languages_show_the_same_snippets_and_each_is_run_here():
    zh, en = (FENCE.findall(part) for part in _sections())
    assert zh == en  # same code, same order
    for kind, code in zh:
        names = [n for n, (lang, marker) in SNIPPETS.items()
                 if lang == kind and (code == marker if lang == "bash" else marker in code)]
        assert len(names) == 1, f"no test (or several) runs this {kind} block:\n{code}"


def test_pretrained_yaml_table_matches_the_shipped_yamls():
    for part in _sections():
        rows = re.findall(r"\| `(yolo11n-\w+-pretrained\.yaml)` \| `(\[.*?\])` \| (.*?) \|", part)
        assert len(rows) == 4
        for yaml_name, line, weights in rows:
            _, _, name, args = yaml_model_load(yaml_name)["backbone"][0]
            assert line == f"[-1, 1, {name}, [{', '.join(map(str, args))}]]"
            with torch.device("meta"):
                sources = lookup(name).cls(3, *args).weight_sources()
            for library, model_name in re.findall(r"(timm|torchvision)[^`]*`(\w+)`", weights):
                assert model_name in sources.values(), (yaml_name, weights, sources)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("imagenet") / "mobilenetv4_conv_small.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("mobilenetv4_conv_small").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, backbone_file):
    """A folder as the page assumes it: the two weight files and dataset/data.yaml (2 classes)."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copy(backbone_file, root)
    save_like_ultralytics("yolo11n.yaml", root / "yolo11n.pt")
    make_tiny_dataset(root / "dataset", n_train=4, n_val=2)
    return root


def _expected_backbone(folder: Path) -> dict:
    state = torch.load(folder / "mobilenetv4_conv_small.pth", weights_only=True)
    return MobileNetV4ConvSmall(3, 1.0).convert_state_dict(state, "timm")


class _Stop(Exception):
    pass


def _run_python(code: str, cwd: Path, monkeypatch) -> torch.nn.Module:
    """exec a snippet in ``cwd`` with train() capped; returns the model the trainer was about to train."""
    seen = {}
    original = YOLO.train

    def quick_train(self, **kwargs):
        kwargs.update(epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False, exist_ok=True,
                      project=str(cwd / "runs"), name="doc")

        def capture(trainer):
            seen["model"] = trainer.model
            raise _Stop

        self.add_callback("on_train_start", capture)
        with pytest.raises(_Stop):
            original(self, **kwargs)

    monkeypatch.setattr(YOLO, "train", quick_train)
    monkeypatch.chdir(cwd)
    exec(compile(code, str(DOC), "exec"), {})
    return seen["model"]


def test_download_snippet_writes_a_file_that_loads(tmp_path, monkeypatch):
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: real(name, pretrained=False, **kw))
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet("download"), str(DOC), "exec"), {})
    (report,) = load_pretrained(MobileNetV4ConvSmall(3, 1.0), tmp_path / "mobilenetv4_conv_small.pth", verbose=False)
    assert report.architecture == "timm:mobilenetv4_conv_small"


def test_yaml_snippet_loads_from_any_directory(backbone_file, tmp_path, monkeypatch):
    line = next(ln for ln in snippet("yaml line").splitlines() if "MobileNetV4ConvSmall" in ln)
    text = (REPO / "yaml" / "yolo11-MobileNetV4-pretrained.yaml").read_text()
    text = re.sub(r"^  - \[-1, 1, MobileNetV4ConvSmall, \[1\.0\]\].*$", line, text, flags=re.M)
    (tmp_path / "project" / "weights").mkdir(parents=True)
    (tmp_path / "project" / "my-yolo11n.yaml").write_text(text)
    shutil.copy(backbone_file, tmp_path / "project" / "weights")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    state = YOLO("../project/my-yolo11n.yaml").model.model[0].state_dict()
    assert all(torch.equal(state[k], v) for k, v in _expected_backbone(backbone_file.parent).items())


@pytest.mark.slow
def test_imagenet_snippet_trains_from_the_loaded_backbone(workspace, monkeypatch, capsys):
    model = _run_python(snippet("imagenet"), workspace, monkeypatch)
    assert "timm:mobilenetv4_conv_small" in capsys.readouterr().out
    state = model.model[0].state_dict()
    assert all(torch.equal(state[k], v) for k, v in _expected_backbone(workspace).items())


@pytest.mark.slow
def test_combined_snippet_trains_from_backbone_and_neck_head_and_prints_the_documented_report(
        workspace, monkeypatch, capsys):
    model = _run_python(snippet("combined"), workspace, monkeypatch)
    printed = capsys.readouterr().out.splitlines()
    assert snippet("report line").strip() in printed
    state = model.model[0].state_dict()
    assert all(torch.equal(state[k], v) for k, v in _expected_backbone(workspace).items())
    stock = read_ultralytics_checkpoint(workspace / "yolo11n.pt")
    copied = 0
    for i in range(5, len(model.model)):  # our layer i has the role of stock layer i + 4
        theirs = stock.model[i + 4].state_dict()
        for key, tensor in model.model[i].state_dict().items():
            if key in theirs and theirs[key].shape == tensor.shape and not key.endswith("num_batches_tracked"):
                assert torch.equal(tensor, theirs[key]), f"model.{i}.{key}"
                copied += 1
    assert copied > 200


@pytest.mark.slow
def test_transfer_table_is_what_load_pretrained_reports(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    for part in _sections():
        rows = re.findall(r"\| (yolo11n-[\w-]+\.yaml)[^|]* \| (\d+)/(\d+) \| ([\d.]+)% \|", part)
        assert len(rows) == 6
        for yaml_name, copied, total, share in rows:
            (report,) = load_pretrained(YOLO(yaml_name), "yolo11n.pt", verbose=False)
            assert (report.tensors, report.candidates) == (int(copied), int(total)), yaml_name
            assert f"{100 * report.parameters / report.model_parameters:.1f}" == share, yaml_name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["train.py imagenet", "train.py freeze", "train.py combined"])
def test_train_py_snippets(name, workspace, tmp_path, monkeypatch, caplog):
    """The command with the page's arguments, plus a tiny schedule, through train.py's main()."""
    run = tmp_path / "run"
    shutil.copytree(workspace, run, ignore=shutil.ignore_patterns("runs"))  # other tests may have trained there
    monkeypatch.chdir(run)
    args = snippet(name).split()[2:]  # after "python train.py"
    quick = ["--data", str(run / "dataset" / "data.yaml"), "--epochs", "1", "--imgsz", "64", "--batch", "2",
             "--workers", "0", "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", "doc", "--no-plots"]
    train_script = load_script("train.py", "train_script")
    with caplog.at_level("INFO", logger="ultralytics"):
        train_script.main(args + quick)
    assert "training starts from the loaded pretrained weights" in caplog.text
    if "--freeze-backbone" in args:
        assert "backbone frozen" in caplog.text
    if "yolo11n.pt" in args:
        assert "neck/head by structure" in caplog.text
    assert (tmp_path / "runs" / "doc" / "weights" / "last.pt").is_file()
