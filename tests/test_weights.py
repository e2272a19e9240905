"""Pretrained ImageNet weights (issue 15): loaded by weights.py after the model is built, strict and
all-or-nothing, kept by the next train(), offline-first online sources, clear errors for files that hold no
weights, width errors that name a YAML that works, freeze_backbone across resume."""

from __future__ import annotations

import json
import os
import time
import shutil
import socket
import subprocess
import sys
import tarfile
import zipfile
from copy import deepcopy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import PARITY_REL, REPO, assert_close_to_scale, load_script, make_tiny_dataset, randomize_and_calibrate_
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from ultralytics_addmodules import load_pretrained
from ultralytics_addmodules.nn.efficientnet import EfficientNetV1, EfficientNetV2
from ultralytics_addmodules.nn.mobilenetv1 import MobileNetV1_n
from ultralytics_addmodules.nn.mobilenetv4 import MobileNetV4ConvMedium, MobileNetV4ConvSmall
from ultralytics_addmodules.training import FREEZE_FILE, freeze_backbone, restore_freeze_backbone
from ultralytics_addmodules.registry import lookup
from ultralytics_addmodules.weights import (
    WeightsError,
    WeightsFileNotFoundError,
    locate_online,
    resolve_weights_path,
)

timm = pytest.importorskip("timm")


def _randomized_timm_state_dict(name: str) -> dict:
    """A full timm classification model's state dict with random weights AND random BN statistics."""
    torch.manual_seed(0)
    return randomize_and_calibrate_(timm.create_model(name, pretrained=False)).state_dict()


@pytest.fixture(scope="module")
def small_sd_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "mnv4_small.pth"
    torch.save(_randomized_timm_state_dict("mobilenetv4_conv_small"), path)
    return path


def _yaml_with_backbone_args(args: list) -> dict:
    d = deepcopy(yaml_model_load("yolo11n-MobileNetV4.yaml"))
    d["backbone"][0][3] = args
    d["nc"] = 2
    return d


def _expected_backbone_state(sd_file) -> dict:
    """What the file must turn into inside MobileNetV4ConvSmall(1.0): converted by the family's own mapping."""
    reference = MobileNetV4ConvSmall(3, 1.0)
    return reference.convert_state_dict(torch.load(sd_file, weights_only=True), "timm")


def _assert_backbone_equals(backbone, expected: dict) -> None:
    state = backbone.state_dict()
    assert expected.keys() <= state.keys()
    bad = [k for k, v in expected.items() if not torch.equal(state[k].cpu(), v.to(state[k].dtype))]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def _one_line_bilingual(message: str) -> None:
    """One line, Chinese first then English, and never the advice to unpickle with weights_only=False."""
    zh, separator, en = message.partition(" | ")
    assert "\n" not in message and separator, message
    assert any("\u4e00" <= c <= "\u9fff" for c in zh) and en.isascii(), message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


def _reference_features(sd_file, x):
    ref = timm.create_model("mobilenetv4_conv_small", features_only=True, out_indices=(1, 2, 3, 4))
    missing, _ = ref.load_state_dict(torch.load(sd_file, weights_only=True), strict=False)
    assert not missing
    with torch.no_grad():
        return ref.eval()(x)


# --- loading into a model ------------------------------------------------------------------------------------
def test_loads_into_yolo_and_reproduces_timm_features(small_sd_file):
    yolo = YOLO("yolo11n-MobileNetV4-pretrained.yaml")
    reports = load_pretrained(yolo, small_sd_file)
    assert len(reports) == 1 and reports[0].architecture == "timm:mobilenetv4_conv_small"
    assert reports[0].tensors == len([k for k in yolo.model.model[0].state_dict() if "num_batches" not in k])
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = yolo.model.model[0].eval()(x)
    assert_close_to_scale(got, _reference_features(small_sd_file, x), PARITY_REL, "features vs timm", min_scale=0.1)


def test_checkpoint_dicts_holding_a_state_dict_are_unwrapped(small_sd_file, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in torch.load(small_sd_file).items()}}, path)
    backbone = MobileNetV4ConvSmall(3, 1.0)
    load_pretrained(backbone, path, verbose=False)
    _assert_backbone_equals(backbone, _expected_backbone_state(small_sd_file))


def test_yaml_line_loads_after_the_build_with_exact_batchnorm_statistics(small_sd_file, caplog):
    # Loaded inside the constructor, the stride probe (a forward pass in training mode) moved running stats by
    # up to 7.5; loaded after the build, every tensor is the file's.
    with caplog.at_level("INFO", logger="ultralytics"):
        model = DetectionModel(_yaml_with_backbone_args([1.0, str(small_sd_file)]), verbose=False)
    assert "loaded pretrained" in caplog.text and str(small_sd_file) in caplog.text
    _assert_backbone_equals(model.model[0], _expected_backbone_state(small_sd_file))


def test_weights_path_in_yaml_resolves_next_to_the_yaml_from_any_directory(small_sd_file, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "weights").mkdir(parents=True)
    shutil.copy(small_sd_file, project / "weights" / "mnv4.pth")
    cfg = _yaml_with_backbone_args([1.0, "weights/mnv4.pth"])
    (project / "model.yaml").write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "yaml_file"}))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "weights").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    yolo = YOLO("../project/model.yaml")
    _assert_backbone_equals(yolo.model.model[0], _expected_backbone_state(small_sd_file))
    # not next to the YAML: the working directory is the second place looked in
    yaml_file = "../project/model.yaml"
    (project / "weights" / "mnv4.pth").rename(elsewhere / "weights" / "mnv4.pth")
    assert resolve_weights_path("weights/mnv4.pth", yaml_file) == elsewhere / "weights" / "mnv4.pth"
    # nowhere: the error names the weights file and both places, not the model file as missing
    with pytest.raises(WeightsFileNotFoundError) as e:
        resolve_weights_path("weights/other.pth", yaml_file)
    message = str(e.value)
    _one_line_bilingual(message)
    assert "weights/other.pth" in message and str(project / "weights" / "other.pth") in message
    assert str(elsewhere / "weights" / "other.pth") in message and yaml_file in message


def test_width_error_names_the_pretrained_yaml_and_the_line_to_write(small_sd_file):
    cases = [(MobileNetV4ConvSmall(3, 0.5), "[-1, 1, MobileNetV4ConvSmall, [1.0]]", "MobileNetV4"),
             (MobileNetV4ConvMedium(3, 0.75), "[-1, 1, MobileNetV4ConvMedium, [1.0]]", "MobileNetV4"),
             (MobileNetV1_n(), "[-1, 1, MobileNetV1, [1.0]]", "MobileNetV1"),
             (EfficientNetV1(3, "efficientnet-b3", 0.5), "[-1, 1, efficient, [efficientnet-b3, 1.0, 1.0]]",
              "EfficientNetV1"),
             (EfficientNetV2(3, "efficientnet_v2_s", 0.25, 0.5),
              "[-1, 1, efficientnet_v2, [efficientnet_v2_s, 1.0, 1.0]]", "EfficientNetV2")]
    for model, line, family in cases:
        ready = f"yolo11n-{family}-pretrained.yaml"
        with pytest.raises(WeightsError, match="no published ImageNet weights") as e:
            load_pretrained(model, small_sd_file, verbose=False)
        message = str(e.value)
        _one_line_bilingual(message)
        assert line in message and f"python train.py --model {ready} --pretrained" in message


def test_the_named_pretrained_yamls_have_weights_for_their_backbone():
    for family in ("MobileNetV4", "MobileNetV1", "EfficientNetV1", "EfficientNetV2"):
        _, _, name, args = yaml_model_load(f"yolo11n-{family}-pretrained.yaml")["backbone"][0]
        with torch.device("meta"):  # only the configuration matters, not the tensors
            backbone = lookup(name).cls(3, *args)
        assert backbone.weight_sources(), family


def test_wrong_architecture_fails_and_changes_nothing(tmp_path):
    path = tmp_path / "medium.pth"
    torch.save(timm.create_model("mobilenetv4_conv_medium").state_dict(), path)
    bb = MobileNetV4ConvSmall(3, 1.0)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with pytest.raises(WeightsError, match=r"do not fit MobileNetV4ConvSmall.*Nothing was loaded") as e:
        load_pretrained(bb, path)
    _one_line_bilingual(str(e.value))
    assert any(w in str(e.value) for w in ("shape of", "missing", "blocks"))
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())


def test_a_failing_source_in_a_list_changes_nothing(small_sd_file, tmp_path):
    backbone = MobileNetV4ConvSmall(3, 1.0)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(WeightsFileNotFoundError, match="missing.pt"):
        load_pretrained(backbone, [small_sd_file, tmp_path / "missing.pt"])
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


# --- files that hold no weights ----------------------------------------------------------------------------
def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must call it)."""
    files = {}
    p = tmp_path / "random.pth"
    p.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    files["random bytes"] = (p, "unrecognised bytes")
    p = tmp_path / "truncated.pth"
    p.write_bytes(good.read_bytes()[:5000])
    files["truncated"] = (p, "truncated")
    p = tmp_path / "weights.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("mnv4/readme.txt", "weights inside")
    files["zip"] = (p, "zip archive")
    p = tmp_path / "weights.tar.gz"
    with tarfile.open(p, "w:gz") as t:
        t.add(good, arcname="w.pth")
    files["tar.gz"] = (p, "gzip")
    p = tmp_path / "page.pth"
    p.write_text("<!DOCTYPE html><html><body>rate limited</body></html>")
    files["html"] = (p, "HTML page")
    p = tmp_path / "lfs.pth"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    files["lfs"] = (p, "Git LFS pointer")
    p = tmp_path / "namespace.pt"
    torch.save({"args": __import__("argparse").Namespace(lr=0.1)}, p)
    files["pickled object"] = (p, "pickles Python objects (argparse.Namespace)")
    p = tmp_path / "list.pth"
    torch.save([1, 2, 3], p)
    files["list"] = (p, "does not hold a state dict")
    return files


def test_files_that_hold_no_weights_say_what_they_are(small_sd_file, tmp_path):
    bb = MobileNetV4ConvSmall(3, 1.0)
    for name, (path, what) in _bad_files(tmp_path, small_sd_file).items():
        with pytest.raises(WeightsError) as e:
            load_pretrained(bb, path, verbose=False)
        message = str(e.value)
        _one_line_bilingual(message)
        assert what in message and str(path.name) in message, (name, message)
        assert "weights_only" not in message, (name, message)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(bb, tmp_path / "nope.pth")


def test_model_without_our_backbone():
    with pytest.raises(WeightsError, match="no ultralytics-addmodules backbone"):
        load_pretrained(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), "timm")
    with pytest.raises(TypeError, match="YOLO object"):
        load_pretrained("yolo11n.yaml", "timm")


# --- online sources: offline-first ---------------------------------------------------------------------------
@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """The hub endpoint and the HTTPS proxy point at a closed local port; both libraries' caches are empty
    folders of the test. Nothing leaves the machine: the reachability probe finds the port closed."""
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for name in ("HF_ENDPOINT", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, closed)
    for name in ("no_proxy", "NO_PROXY", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def _error_within(seconds: float, build) -> str:
    start = time.perf_counter()
    with pytest.raises(WeightsError) as e:
        build()
    assert time.perf_counter() - start < seconds
    message = str(e.value)
    _one_line_bilingual(message)
    assert "--pretrained path/to/file" in message
    return message


def _with_backbone(yaml_name: str, line: list):
    cfg = deepcopy(yaml_model_load(yaml_name))
    cfg["backbone"][0] = line
    return lambda: DetectionModel(cfg, verbose=False)


def test_online_sources_without_network_fail_fast_with_what_to_download(no_network, monkeypatch):
    # before: 52-55 s of hub retries, then a raw LocalEntryNotFoundError / URLError
    message = _error_within(15, lambda: load_pretrained(MobileNetV4ConvSmall(3, 1.0), "timm"))
    assert "timm/mobilenetv4_conv_small.e2400_r224_in1k" in message  # the exact hub repository
    assert "HF_ENDPOINT=https://hf-mirror.com" in message and "cannot be reached" in message
    assert "[-1, 1, MobileNetV4ConvSmall, [1.0, path/to/file]]" in message
    message = _error_within(15, lambda: load_pretrained(EfficientNetV1(), "torchvision"))
    assert "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth" in message
    assert "[-1, 1, efficient, [efficientnet-b0, 1.0, 1.0, path/to/file]]" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _error_within(15, lambda: load_pretrained(MobileNetV4ConvSmall(3, 1.0), "timm"))
    assert "HF_HUB_OFFLINE is set" in message


@pytest.mark.slow
def test_yaml_online_sources_without_network_fail_with_what_to_download(no_network):
    # the time bound includes building the model on a shared CPU
    message = _error_within(60, _with_backbone("yolo11n-MobileNetV4-pretrained.yaml",
                                               [-1, 1, "MobileNetV4ConvSmall", [1.0, "timm"]]))
    assert "timm/mobilenetv4_conv_small.e2400_r224_in1k" in message
    message = _error_within(60, _with_backbone("yolo11n-timm.yaml", [-1, 1, "TimmBackbone", ["convnext_atto", True]]))
    assert "timm/convnext_atto.d2_in1k" in message and "[-1, 1, TimmBackbone, [convnext_atto, path/to/file]]" in message


def test_cached_online_weights_load_without_network(no_network):
    # the layouts the two libraries cache downloads in (huggingface_hub's snapshots, torch hub's checkpoints)
    snapshot = no_network / "hf" / "models--timm--mobilenetv4_conv_small.e2400_r224_in1k"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (snapshot / "snapshots" / ("0" * 40)).mkdir(parents=True)
    from safetensors.torch import save_file

    timm_state = timm.create_model("mobilenetv4_conv_small").state_dict()
    save_file(timm_state, snapshot / "snapshots" / ("0" * 40) / "model.safetensors")
    import torchvision

    tv_state = torchvision.models.efficientnet_b0(weights=None).state_dict()
    (no_network / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(tv_state, no_network / "torch" / "hub" / "checkpoints" / "efficientnet_b0_rwightman-7f5810bc.pth")
    for backbone, source, expected in ((MobileNetV4ConvSmall(3, 1.0), "timm", timm_state["conv_stem.weight"]),
                                       (EfficientNetV1(), "torchvision", tv_state["features.0.0.weight"])):
        (report,) = load_pretrained(backbone, source, verbose=False)
        assert report.source == source and torch.equal(backbone.stem.conv.weight, expected)


def test_timm_without_published_weights_names_the_other_source():
    assert locate_online("timm", "efficientnetv2_s") is None  # timm has the architecture but no weights
    with pytest.raises(WeightsError, match=r"publishes no pretrained weights for efficientnetv2_s.*torchvision"):
        load_pretrained(EfficientNetV2(3, "efficientnet_v2_s"), "timm", verbose=False)


# --- the loaded weights are where training starts -----------------------------------------------------------
class _Stop(Exception):
    """Raised from a callback once the state to check has been seen."""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), n_train=4, n_val=2)


def _train_until_start(yolo, data, tmp_path, name="run", **extra) -> dict:
    """Run train() until on_train_start; returns the trainer's model and EMA state dicts there."""
    seen = {}

    def capture(trainer):
        seen["model"] = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        seen["ema"] = {k: v.detach().cpu().clone() for k, v in trainer.ema.ema.state_dict().items()}
        raise _Stop

    yolo.add_callback("on_train_start", capture)
    args = dict(data=str(data), epochs=1, imgsz=64, batch=2, device="cpu", workers=0, project=str(tmp_path),
                name=name, plots=False, exist_ok=True)
    with pytest.raises(_Stop):
        yolo.train(**{**args, **extra})
    yolo.callbacks["on_train_start"].remove(capture)
    return seen


@pytest.mark.slow
def test_loaded_backbone_is_where_train_starts_and_only_once(small_sd_file, tiny_data, tmp_path):
    yolo = YOLO("yolo11n-MobileNetV4-pretrained.yaml")
    load_pretrained(yolo, small_sd_file)
    expected = {f"model.0.{k}": v for k, v in _expected_backbone_state(small_sd_file).items()}
    seen = _train_until_start(yolo, tiny_data, tmp_path)
    for state in (seen["model"], seen["ema"]):
        bad = [k for k, v in expected.items() if not torch.equal(state[k], v.to(state[k].dtype))]
        assert not bad, bad[:3]
    # consumed by that train(): the next one is not forced back to the loaded tensors
    again = _train_until_start(yolo, tiny_data, tmp_path, name="again")
    assert any(not torch.equal(again["model"][k], v.to(again["model"][k].dtype)) for k, v in expected.items())


@pytest.mark.slow
def test_checkpoint_yaml_weights_are_not_reloaded_when_fine_tuning(small_sd_file, tiny_data, tmp_path):
    """A trained model whose YAML names a weights file fine-tunes after that file is gone (the trainer builds
    the model from the checkpoint's YAML only to receive the checkpoint's weights)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(small_sd_file, work / "mnv4.pth")
    cfg = _yaml_with_backbone_args([1.0, "mnv4.pth"])
    (work / "model.yaml").write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "yaml_file"}))
    trained = YOLO(str(work / "model.yaml")).model
    with torch.no_grad():
        trained.model[0].stem.conv.weight.mul_(-1)  # stands in for training: not what the weights file holds
    torch.save({"epoch": -1, "model": deepcopy(trained).half(), "train_args": {}}, work / "trained.pt")
    (work / "mnv4.pth").unlink()
    seen = _train_until_start(YOLO(str(work / "trained.pt")), tiny_data, tmp_path)
    assert torch.equal(seen["model"]["model.0.stem.conv.weight"], trained.model[0].stem.conv.weight.half().float())


# --- freeze_backbone ---------------------------------------------------------------------------------------------
def _frozen_per_epoch(epochs: int, start_epoch: int, total: int, tmp_path: Path) -> list[bool]:
    """Drive freeze_backbone's callbacks with a stand-in trainer, as Ultralytics calls them."""
    callbacks = {"on_pretrain_routine_end": [], "on_train_epoch_start": []}
    yolo = SimpleNamespace(model=torch.nn.Sequential(MobileNetV1_n()), callbacks=callbacks,
                           add_callback=lambda event, f: callbacks[event].append(f))
    freeze_backbone(yolo, epochs)
    trainer = SimpleNamespace(model=yolo.model, start_epoch=start_epoch, epoch=start_epoch, save_dir=tmp_path)
    for callback in yolo.callbacks["on_pretrain_routine_end"]:
        callback(trainer)
    states = []
    for epoch in range(start_epoch, total):
        trainer.epoch = epoch
        for callback in yolo.callbacks["on_train_epoch_start"]:
            callback(trainer)
        states.append(not any(p.requires_grad for p in yolo.model[0].parameters()))
    return states


def test_freeze_backbone_is_frozen_exactly_while_epoch_below_n(tmp_path):
    assert _frozen_per_epoch(2, 0, 4, tmp_path) == [True, True, False, False]
    assert _frozen_per_epoch(2, 1, 4, tmp_path) == [True, False, False]  # resumed inside the frozen phase
    assert _frozen_per_epoch(2, 3, 5, tmp_path) == [False, False]  # resumed after it: was frozen for good
    assert json.loads((tmp_path / FREEZE_FILE).read_text()) == {"epochs": 2}


def test_freeze_backbone_rejects_bad_epochs():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=repr(bad)):
            freeze_backbone(None, bad)  # checked before the model is touched


@pytest.mark.slow
def test_freeze_backbone_setting_survives_an_interrupted_run(tiny_data, tmp_path):
    yolo = YOLO("yolo11n-MobileNetV1.yaml")
    freeze_backbone(yolo, 2)
    frozen = []
    record = lambda t: frozen.append(not any(p.requires_grad for p in t.model.model[0].parameters()))  # noqa: E731

    def stop_after_first_epoch(trainer):
        raise _Stop

    yolo.add_callback("on_train_epoch_end", record)
    yolo.add_callback("on_model_save", stop_after_first_epoch)
    with pytest.raises(_Stop):
        yolo.train(data=str(tiny_data), epochs=3, imgsz=64, batch=2, device="cpu", workers=0, project=str(tmp_path),
                   name="run", plots=False)
    last = tmp_path / "run" / "weights" / "last.pt"
    resumed = YOLO(str(last))
    assert restore_freeze_backbone(resumed, last) == 2
    resumed.add_callback("on_train_epoch_end", record)
    resumed.train(resume=True)
    assert frozen == [True, True, False]  # epochs 0 | 1, 2 after the resume


# --- train.py ----------------------------------------------------------------------------------------------------
def _run_train_py(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "true", "YOLO_VERBOSE": "true", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _import_train_script():
    module = load_script("train.py", "train_script")
    return module


@pytest.fixture(scope="module")
def family_state_dicts(tmp_path_factory):
    """A random-weight state dict per family, saved from the reference library's own model."""
    import torchvision

    folder = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    models = {"MobileNetV4": timm.create_model("mobilenetv4_conv_small"),
              "MobileNetV1": timm.create_model("mobilenetv1_100"),
              "EfficientNetV1": timm.create_model("efficientnet_b0"),
              "EfficientNetV2": torchvision.models.efficientnet_v2_s(weights=None)}
    files = {}
    for family, model in models.items():
        files[family] = folder / f"{family}.pth"
        torch.save(model.state_dict(), files[family])
    return files


@pytest.mark.slow
@pytest.mark.parametrize("family", ["MobileNetV4", "MobileNetV1", "EfficientNetV1", "EfficientNetV2"])
def test_train_py_with_a_pretrained_yaml_and_a_state_dict(family, family_state_dicts, tiny_data, tmp_path,
                                                           monkeypatch):
    """train.py's own route (main() with --model/--pretrained), stopped once training is about to start."""
    seen = {}
    original = YOLO.train

    def train_until_start(self, **kwargs):  # what main() asked for, at a tiny size
        monkeypatch.setattr(YOLO, "train", original)
        seen.update(_train_until_start(self, kwargs["data"], tmp_path, seed=kwargs["seed"]))

    monkeypatch.setattr(YOLO, "train", train_until_start)
    yaml_name = f"yolo11n-{family}-pretrained.yaml"
    _import_train_script().main(["--model", yaml_name, "--pretrained", str(family_state_dicts[family]),
                                 "--data", str(tiny_data), "--device", "cpu", "--workers", "0", "--no-plots"])
    _, _, name, args = yaml_model_load(yaml_name)["backbone"][0]
    reference = lookup(name).cls(3, *args)
    load_pretrained(reference, family_state_dicts[family], verbose=False)
    expected = {f"model.0.{k}": v for k, v in reference.state_dict().items()}
    assert all(torch.equal(seen["model"][k], v) for k, v in expected.items())


@pytest.mark.slow
def test_train_py_errors_name_the_weights_not_the_model(small_sd_file, tiny_data, tmp_path):
    cfg = _yaml_with_backbone_args([1.0, "weights/missing.pth"])
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "yaml_file"}))
    result = _run_train_py("--model", tmp_path / "model.yaml", "--data", tiny_data, "--project", tmp_path / "runs",
                           cwd=tmp_path)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-2000:]
    assert "weights/missing.pth" in errors[0] and "model not found" not in errors[0]
    result = _run_train_py("--model", "yolo11n-MobileNetV4.yaml", "--pretrained", small_sd_file, "--data", tiny_data,
                           "--project", tmp_path / "runs", cwd=tmp_path)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("train.py: error:")]
    assert len(errors) == 1 and "yolo11n-MobileNetV4-pretrained.yaml" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "runs").exists()
