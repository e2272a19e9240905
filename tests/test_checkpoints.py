"""Safe and durable checkpoints (issue 17): a .pt never runs hidden code on any loading path, genuine checkpoints of
every task (stock and ours) load, predict and resume, a save killed mid-write leaves the previous file, and a run
killed between its results.csv row and its checkpoint resumes with every epoch exactly once."""

from __future__ import annotations

import csv
import os
import pickle
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import TASK_MODELS, fresh_python, load_script, make_tiny_task_dataset
from ultralytics import YOLO
from ultralytics.nn import tasks

from ultralytics_addmodules import checkpoints
from ultralytics_addmodules.checkpoints import (
    CorruptCheckpointError,
    MissingClassError,
    UnsafeCheckpointError,
    drop_rows_after,
    safe_load,
    save_atomically,
    strip_atomically,
)


# --- malicious files: each one writes a marker file if anything of it runs ---------------------------------
class Payload:
    """Unpickling this calls ``exec``, which writes ``marker``: the classic pickle payload."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


class CallsAllowedClass:
    """Calls an allowed class with arguments (its constructor would run): genuine files only rebuild it."""

    def __reduce__(self):
        return tasks.DetectionModel, ("yolo11n.yaml",)


def torch_zip(path: Path, data_pkl: bytes) -> Path:
    """A file in torch's zip checkpoint layout holding a hand-written pickle."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return path


@pytest.fixture(scope="module")
def small_model():
    return YOLO("yolo11n.yaml").model


def _exec_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


def evil_file(kind: str, tmp_path: Path, model) -> tuple[Path, Path, str]:
    """(file, marker, what the refusal must name) for each kind of malicious file."""
    marker = tmp_path / f"{kind}.ran"
    path = tmp_path / f"{kind}.pt"
    code = _exec_code(marker).encode()
    if kind == "bare":
        torch.save(Payload(marker), path)
    elif kind == "inside_checkpoint":  # a real checkpoint of ours with the payload added: stock loads it silently
        torch.save({"model": model, "train_args": {}, "hidden": Payload(marker)}, path)
    elif kind == "inside_module":
        import copy

        m = copy.deepcopy(model)
        m.model[0].hidden = Payload(marker)
        torch.save({"model": m, "train_args": {}}, path)
    elif kind == "legacy_torch":
        torch.save({"model": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    elif kind == "legacy_pickle":
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    elif kind == "protocol4":  # STACK_GLOBAL instead of GLOBAL
        torch.save(Payload(marker), path, pickle_protocol=4)
    elif kind == "protocol0_inst":  # INST: the class is called by the INST opcode itself, no REDUCE
        torch_zip(path, b"(V" + code + b"\ni__builtin__\nexec\n.")
    elif kind == "calls_allowed_class":
        torch.save({"model": CallsAllowedClass(), "train_args": {}}, path)
        return path, marker, "ultralytics.nn.tasks.DetectionModel (call)"
    elif kind == "calls_getattr_result":  # getattr(Conv, "forward_fuse") is allowed; calling what it returns is not
        torch_zip(path, b"\x80\x02c__builtin__\ngetattr\ncultralytics.nn.modules.conv\nConv\n"
                        b"X\x0c\x00\x00\x00forward_fuse\x86R)R.")
        return path, marker, "TypeError"
    elif kind == "getattr_unlisted":
        torch_zip(path, b"\x80\x02c__builtin__\ngetattr\ncos\nsystem\nX\x04\x00\x00\x00call\x86R.")
        return path, marker, "os.system"
    elif kind == "build_on_class":  # BUILD on a class sets attributes on it for the whole process
        torch_zip(path, b"\x80\x02ctorch.nn.modules.conv\nConv2d\nN}X\x07\x00\x00\x00forwardK\x01s\x86b.")
        return path, marker, "TypeError"
    return path, marker, "builtins.exec"


EVIL_KINDS = ["bare", "inside_checkpoint", "inside_module", "legacy_torch", "legacy_pickle", "protocol4",
              "protocol0_inst", "calls_allowed_class", "calls_getattr_result", "getattr_unlisted", "build_on_class"]


def _load_one(path):
    return (getattr(tasks, "attempt_load_one_weight", None) or tasks.load_checkpoint)(str(path))  # 8.3 / 8.4


def _load_ensemble(path):
    if not hasattr(tasks, "attempt_load_weights"):
        pytest.skip("Ultralytics 8.4 has no attempt_load_weights (load_checkpoint is covered)")
    return tasks.attempt_load_weights(str(path))


def _autobackend(path):
    from ultralytics.nn.autobackend import AutoBackend

    return AutoBackend(str(path), device=torch.device("cpu"), verbose=False)


def _trainer_resume(path):
    from ultralytics.models.yolo.detect import DetectionTrainer

    return DetectionTrainer(overrides={"model": str(path), "resume": str(path), "device": "cpu",
                                       "project": str(Path(path).parent / "runs")})


LOADERS = {
    "YOLO": lambda p: YOLO(str(p)),
    "predict_autobackend": _autobackend,
    "attempt_load_weights": _load_ensemble,
    "load_one_weight": _load_one,
    "trainer_resume": _trainer_resume,
    "safe_load": safe_load,
}


def assert_refused(error: BaseException, path: Path, marker: Path, named: str) -> None:
    message = str(error)
    assert not marker.exists(), "the payload ran"
    assert "\n" not in message, message
    assert path.name in message and named in message, message
    assert checkpoints.TRUST_ENV in message  # says how to load a file you made yourself


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_malicious_file_is_refused_by_safe_load_before_it_runs(kind, tmp_path, small_model):
    path, marker, named = evil_file(kind, tmp_path, small_model)
    before = torch.nn.Conv2d.forward
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_load(path)
    assert_refused(e.value, path, marker, named)
    assert torch.nn.Conv2d.forward is before


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind", ["bare", "inside_checkpoint", "legacy_torch"])
def test_every_loading_path_refuses_without_running_the_payload(kind, loader, tmp_path, small_model):
    path, marker, named = evil_file(kind, tmp_path, small_model)
    with pytest.raises(UnsafeCheckpointError) as e:
        LOADERS[loader](path)
    assert_refused(e.value, path, marker, named)


def test_pickle_extension_codes_cannot_smuggle_a_cached_function(tmp_path):
    """EXT opcodes fetch objects from copyreg's cache without asking find_class: prime it with exec first."""
    import copyreg

    marker = tmp_path / "ext.ran"
    copyreg.add_extension("builtins", "exec", 240)
    try:
        assert pickle.loads(b"\x80\x02\x82\xf0.") is exec  # exec is now in the cache
        path = torch_zip(tmp_path / "ext.pt", b"\x80\x02\x82\xf0V" + _exec_code(marker).encode() + b"\n\x85R.")
        with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
            safe_load(path)
        assert not marker.exists()
    finally:
        copyreg.remove_extension("builtins", "exec", 240)
        copyreg.clear_extension_cache()


def test_stock_would_have_run_the_payload(tmp_path, small_model):
    """The threat is real: Ultralytics' own loader runs the payload inside a real checkpoint without a word."""
    from ultralytics_addmodules.patch import STOCK

    path, marker, _ = evil_file("inside_checkpoint", tmp_path, small_model)
    ckpt, _ = STOCK["torch_safe_load"](str(path))
    assert marker.exists() and isinstance(ckpt["model"], torch.nn.Module)


def test_trusting_a_file_loads_it_with_stock_and_nothing_else(tmp_path, small_model, monkeypatch):
    path, marker, _ = evil_file("inside_checkpoint", tmp_path, small_model)
    other, other_marker, _ = evil_file("bare", tmp_path, small_model)
    monkeypatch.setenv(checkpoints.TRUST_ENV, str(path))
    with pytest.raises(UnsafeCheckpointError):
        YOLO(str(other))  # only the named file is trusted
    assert not other_marker.exists()
    YOLO(str(path))
    assert marker.exists()  # trusting means stock loading: the file's code runs (the documented risk)


# --- train.py as a user runs it ---------------------------------------------------------------------------
def _train_script():
    module = load_script("train.py", "train_script_ckpt")
    return module


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("train.py: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("flag", ["--model", "--resume"])
def test_train_py_refuses_evil_pt_in_one_line(flag, tmp_path, small_model, capsys):
    path, marker, named = evil_file("inside_checkpoint", tmp_path, small_model)
    with pytest.raises(SystemExit) as e:
        _train_script().main([flag, str(path), "--data", str(tmp_path / "none.yaml")])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert named in line and path.name in line and not marker.exists()


def _fake_run(root: Path, name: str, epoch: int, epochs: int, age: int, corrupt: bool = False) -> Path:
    last = root / name / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"epoch": epoch, "train_args": {"epochs": epochs}, "model": None}, last)
    if corrupt:  # what a kill during a non-atomic save left behind
        last.write_bytes(last.read_bytes()[:300])
    os.utime(last, (1_700_000_000 - age, 1_700_000_000 - age))
    return last


@pytest.fixture
def recorded_resume(monkeypatch):
    import ultralytics

    calls = []

    class Recorder:
        def __init__(self, path):
            self.path = path

        def train(self, **kwargs):
            calls.append((self.path, kwargs))

    monkeypatch.setattr(ultralytics, "YOLO", Recorder)
    return calls


def test_train_py_resume_skips_a_damaged_newest_run_and_says_which_it_resumes(tmp_path, recorded_resume, capsys):
    interrupted = _fake_run(tmp_path, "train", epoch=1, epochs=5, age=300)
    _fake_run(tmp_path, "train2", epoch=2, epochs=5, age=100, corrupt=True)
    _train_script().main(["--resume", "--project", str(tmp_path)])
    assert recorded_resume == [(str(interrupted), {"resume": True, "device": "cpu"})]
    out, err = capsys.readouterr()
    assert str(interrupted) in out and "2 of 5" in out
    assert "train2" in err and "corrupt or truncated" in err


def test_train_py_resume_of_a_finished_run_is_one_line(tmp_path, recorded_resume, capsys):
    older = _fake_run(tmp_path, "train", epoch=0, epochs=3, age=300)
    finished = _fake_run(tmp_path, "train2", epoch=-1, epochs=3, age=100)
    for argv, hint in ((["--resume", "--project", str(tmp_path)], str(older)), (["--resume", str(finished)], None)):
        with pytest.raises(SystemExit) as e:
            _train_script().main(argv)
        assert e.value.code == 2
        line = _one_error_line(capsys)
        assert str(finished) in line and "finished" in line and "已经完成" in line
        assert hint is None or hint in line  # the latest search names the older interrupted run to pass instead
    assert recorded_resume == []


# --- genuine checkpoints, loaded fast (no training) ------------------------------------------------------
OURS = ["yolo11n-MobileNetV4.yaml", "yolo11n-EfficientNetV2.yaml", "yolo11n-MobileNetV1.yaml", "yolo11n-C3_UIB.yaml",
        "yolo11n-timm.yaml"]


def _assert_same_as_stock(path: Path) -> None:
    ours = safe_load(path)
    stock = torch.load(path, map_location="cpu", weights_only=False)
    assert set(ours) == set(stock)
    a, b = ours["model"], stock["model"]
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert {k: type(v) for k, v in vars(a.model[0]).items()} == {k: type(v) for k, v in vars(b.model[0]).items()}
    assert isinstance(YOLO(str(path)).model, type(b))


def test_saved_and_fused_stock_model_loads_like_stock(tmp_path, small_model):
    import copy

    from ultralytics.nn.modules import Detect

    model = copy.deepcopy(small_model)
    torch.save({"model": copy.deepcopy(model).half(), "train_args": {}}, tmp_path / "plain.pt")
    old = copy.deepcopy(model)
    old.model[-1].detect = Detect.forward  # heads up to Ultralytics 8.2 kept this (official YOLOv8 -seg/-pose/-obb)
    torch.save({"model": old.half(), "train_args": {}}, tmp_path / "yolov8_era.pt")
    model.fuse(verbose=False)  # forward = forward_fuse: bound methods, pickled through getattr
    torch.save({"model": model.half(), "train_args": {}}, tmp_path / "fused.pt")
    for name in ("plain.pt", "yolov8_era.pt", "fused.pt"):
        _assert_same_as_stock(tmp_path / name)
    assert safe_load(tmp_path / "yolov8_era.pt")["model"].model[-1].detect is Detect.forward


def test_getattr_pairs_match_classes_under_their_early_yolov8_names(tmp_path):
    from ultralytics.nn.modules import Detect

    path = torch_zip(tmp_path / "early.pt", b"\x80\x02c__builtin__\ngetattr\ncultralytics.nn.modules\nDetect\n"
                                            b"X\x07\x00\x00\x00forward\x86R.")
    assert safe_load(path) is Detect.forward


@pytest.mark.slow
@pytest.mark.parametrize("model", OURS[1:])  # MobileNetV4 trains and resumes below
def test_checkpoints_of_our_other_families_load_like_stock(model, tmp_path):
    if "timm" in model:
        pytest.importorskip("timm")
    import copy

    net = YOLO(model).model
    path = tmp_path / "last.pt"
    torch.save({"model": None, "ema": copy.deepcopy(net).half(), "train_args": {}}, path)  # as training saves
    ours, stock = safe_load(path), torch.load(path, map_location="cpu", weights_only=False)
    assert [type(m) for m in ours["ema"].modules()] == [type(m) for m in stock["ema"].modules()]
    assert all(torch.equal(x, y) for x, y in zip(ours["ema"].state_dict().values(), stock["ema"].state_dict().values()))


def test_state_dict_files_load(tmp_path, small_model):
    """What weights.py reads: plain state dicts of tensors."""
    path = tmp_path / "sd.pth"
    torch.save(small_model.state_dict(), path)
    loaded = safe_load(path)
    assert loaded.keys() == small_model.state_dict().keys()


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        YOLO(str(path))


def test_newer_class_in_a_known_module_is_one_clear_line(tmp_path):
    path = torch_zip(tmp_path / "newer.pt", b"\x80\x02cultralytics.nn.modules.block\nBlockFromTheFuture\n)\x81.")
    with pytest.raises(MissingClassError, match="BlockFromTheFuture") as e:
        YOLO(str(path))
    assert "\n" not in str(e.value) and "newer.pt" in str(e.value)


# --- damaged files keep stock's exception types ------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated_head", "truncated_half", "garbage", "empty", "other_pickle"])
def test_damaged_files_are_one_line_and_keep_stock_exception_types(damage, tmp_path, small_model):
    from ultralytics_addmodules.patch import STOCK

    good = tmp_path / "good.pt"
    torch.save({"model": small_model, "train_args": {}}, good)
    bad = tmp_path / f"{damage}.pt"
    whole = good.read_bytes()
    content = {"truncated_head": whole[:20000], "truncated_half": whole[: len(whole) // 2],
               "garbage": b"\x00this is not a checkpoint" * 64, "empty": b"",
               "other_pickle": pickle.dumps({"a": 1}, protocol=2)}[damage]
    bad.write_bytes(content)
    with pytest.raises(Exception) as stock_error:
        STOCK["torch_safe_load"](str(bad))
    with pytest.raises(Exception) as ours:
        YOLO(str(bad))
    assert isinstance(ours.value, type(stock_error.value)), (type(ours.value), type(stock_error.value))
    assert "\n" not in str(ours.value) and bad.name in str(ours.value)


# --- durable saves ---------------------------------------------------------------------------------------
class FakeTrainer:
    def __init__(self, wdir: Path, epoch: int = 3, save_period: int = 1):
        self.wdir, self.last, self.best = wdir, wdir / "last.pt", wdir / "best.pt"
        self.epoch, self.save_period = epoch, save_period


def stock_like_save(trainer, fail_after: int | None = None):
    """Writes what Ultralytics' save_model writes, where it writes it; optionally dies half-way through a file."""
    data = f"epoch {trainer.epoch}".encode() * 1000
    targets = [trainer.last, trainer.best, trainer.wdir / f"epoch{trainer.epoch}.pt"]
    for k, target in enumerate(targets):
        if fail_after is not None and k == fail_after:
            target.write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt("killed mid-write")
        target.write_bytes(data)
    return "saved"


def test_atomic_save_moves_every_file_into_place_last_pt_last(tmp_path, monkeypatch):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    (wdir / checkpoints.STAGING).mkdir()  # left behind by an earlier kill
    (wdir / checkpoints.STAGING / "last.pt.partial").write_bytes(b"half")
    order = []
    real_replace = os.replace
    monkeypatch.setattr(checkpoints.os, "replace", lambda a, b: (order.append(Path(b).name), real_replace(a, b)))
    trainer = FakeTrainer(wdir)
    assert save_atomically(trainer, stock_like_save) == "saved"
    assert order[-1] == "last.pt" and sorted(order) == ["best.pt", "epoch3.pt", "last.pt"]
    assert (wdir / "last.pt").read_bytes().startswith(b"epoch 3") and not (wdir / checkpoints.STAGING).exists()
    assert (trainer.wdir, trainer.last, trainer.best) == (wdir, wdir / "last.pt", wdir / "best.pt")


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_save_killed_mid_write_leaves_the_previous_files(fail_after, tmp_path):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    save_atomically(FakeTrainer(wdir, epoch=3), stock_like_save)
    before = {p.name: p.read_bytes() for p in wdir.iterdir()}
    trainer = FakeTrainer(wdir, epoch=4)
    with pytest.raises(KeyboardInterrupt):
        save_atomically(trainer, lambda t: stock_like_save(t, fail_after=fail_after))
    assert {p.name: p.read_bytes() for p in wdir.iterdir()} == before
    assert trainer.last == wdir / "last.pt"


def test_strip_killed_mid_write_leaves_the_file(tmp_path, small_model):
    last = tmp_path / "last.pt"
    torch.save({"model": small_model, "train_args": {}}, last)
    before = last.read_bytes()

    def dies_while_writing(f, s="", updates=None):
        Path(s).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        strip_atomically(dies_while_writing, last)
    assert last.read_bytes() == before and list(tmp_path.iterdir()) == [last]
    strip_atomically(lambda f, s="", updates=None: Path(s).write_bytes(b"stripped") and {"ok": 1}, last)
    assert last.read_bytes() == b"stripped"


CSV_83 = ("                  epoch,         train/box_loss,           metrics/mAP50\n"
          "                      1,                 3.1415,                       0\n"
          "                      2,                 2.7182,                     0.1\n"
          "                      3,                 1.4142,                     0.2\n")
CSV_84 = "epoch,time,train/box_loss,metrics/mAP50\n1,3.2,3.14,0\n2,6.1,2.71,0.1\n3,9.0,1.41"  # last row cut short


@pytest.mark.parametrize("text, epoch, kept", [(CSV_83, 2, [1, 2]), (CSV_83, 3, [1, 2, 3]), (CSV_84, 3, [1, 2]),
                                               (CSV_84, 1, [1])])
def test_results_rows_after_the_checkpoint_are_dropped(text, epoch, kept, tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(text)
    dropped = drop_rows_after(path, epoch)
    rows = [int(float(r[0])) for r in list(csv.reader(path.read_text().splitlines()))[1:]]
    assert rows == kept and dropped == text.count("\n") + (not text.endswith("\n")) - 1 - len(kept)
    assert path.read_text().splitlines()[0] == text.splitlines()[0]


# --- genuine checkpoints of every task: train, interrupt, load, predict, resume (slow) ---------------------
class Interrupt(Exception):
    pass


def _stop_after_first_epoch(trainer):
    if trainer.epoch == 0:
        raise Interrupt


def _epochs(run: Path) -> list[int]:
    with open(run / "results.csv", newline="") as f:
        return [int(float(row[0])) for row in list(csv.reader(f))[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("task, model", [*TASK_MODELS.items(), ("detect", "yolo11n-MobileNetV4.yaml")])
def test_genuine_checkpoint_of_each_task_loads_predicts_and_resumes(task, model, tmp_path):
    data = make_tiny_task_dataset(tmp_path / "data", task, n_train=2, n_val=1, imgsz=32)
    yolo = YOLO(model, task=task)
    yolo.add_callback("on_fit_epoch_end", _stop_after_first_epoch)
    with pytest.raises(Interrupt):
        yolo.train(data=str(data), epochs=2, imgsz=32, batch=2, workers=0, device="cpu", plots=False, amp=False,
                   val=False, project=str(tmp_path), name="run", exist_ok=True, verbose=False)
    run = tmp_path / "run"
    last = run / "weights" / "last.pt"
    image = torch.zeros(1, 3, 32, 32)
    interrupted = YOLO(str(last))  # the file training writes: model, EMA, optimizer, numpy metrics, args
    assert interrupted.ckpt["epoch"] == 0 and interrupted.predict(image, verbose=False)
    YOLO(str(last)).train(resume=True)
    assert _epochs(run) == [1, 2]
    for final in ("last.pt", "best.pt"):
        assert YOLO(str(run / "weights" / final)).predict(image, verbose=False)
    assert not (run / "weights" / checkpoints.STAGING).exists()


KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, pathlib
    from ultralytics import YOLO
    real_write = pathlib.Path.write_bytes

    def dying_write(self, data):  # the second save dies half-way through last.pt (its csv row is written)
        if self.name.startswith("last.pt") and TRAINER[0].epoch == 1:
            real_write(self, data[: len(data) // 2])
            os._exit(17)
        return real_write(self, data)

    pathlib.Path.write_bytes = dying_write
    TRAINER = []
    yolo = YOLO(MODEL)
    yolo.add_callback("on_train_start", TRAINER.append)
    yolo.train(data=DATA, project=PROJECT, name="run", exist_ok=True, epochs=3, imgsz=32, batch=2, workers=0,
               device="cpu", plots=False, amp=False, val=False, verbose=False)
""")


@pytest.mark.slow
def test_run_killed_while_saving_resumes_with_every_epoch_exactly_once(tmp_path):
    data = make_tiny_task_dataset(tmp_path / "data", "detect", n_train=2, n_val=1, imgsz=32)
    prelude = f"MODEL = 'yolo11n.yaml'; DATA = {str(data)!r}; PROJECT = {str(tmp_path)!r}\n"
    r = fresh_python(prelude + KILLED_WHILE_SAVING, cwd=tmp_path)
    assert r.returncode == 17, r.stderr[-3000:]
    run = tmp_path / "run"
    assert _epochs(run) == [1, 2]  # epoch 2's row is written, its checkpoint is not
    last = run / "weights" / "last.pt"
    assert safe_load(last)["epoch"] == 0  # the previous good file, whole
    assert _train_script().pick_resume_checkpoint(str(tmp_path))[0] == last  # not the half-written staging file
    r = fresh_python(f"from ultralytics import YOLO\nYOLO({str(last)!r}).train(resume=True)\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _epochs(run) == [1, 2, 3]
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == -1  # finished and stripped



def test_layers_of_a_users_registered_module_load_and_nothing_else_of_it(tmp_path, monkeypatch):
    """A model built from the user's own registered blocks saves them; loading it back must work (the user's
    module is imported already), while a non-layer global of that same module is still refused."""
    import sys
    import types

    from ultralytics_addmodules import registry

    module = types.ModuleType("users_blocks")
    exec(textwrap.dedent("""
        import torch
        class UserBlock(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 1)
        class Helper(torch.nn.Module):  # a layer the registered block may use inside
            pass
        def not_a_layer():
            return 1
    """), module.__dict__)
    monkeypatch.setitem(sys.modules, "users_blocks", module)
    saved = registry.snapshot()
    try:
        registry.register_module(module.UserBlock)
        torch.save({"model": torch.nn.Sequential(module.UserBlock(), module.Helper())}, tmp_path / "user.pt")
        loaded = safe_load(tmp_path / "user.pt")
        assert type(loaded["model"][0]).__name__ == "UserBlock"
        torch.save({"model": module.not_a_layer}, tmp_path / "function.pt")
        with pytest.raises(UnsafeCheckpointError, match="users_blocks.not_a_layer"):
            safe_load(tmp_path / "function.pt")
    finally:
        registry.restore(saved)
    torch.save({"model": module.UserBlock()}, tmp_path / "unregistered.pt")  # new weights: a new verdict
    with pytest.raises(UnsafeCheckpointError, match="users_blocks.UserBlock"):
        safe_load(tmp_path / "unregistered.pt")


def test_a_models_loss_object_loads_like_ultralytics_own_restricted_loader_allows(tmp_path):
    """8.4's own restricted loader rebuilds losses and assigners kept on a model (model.criterion); so do we.
    Plain classes of other modules stay refused."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.metrics import Metric

    from helpers import release

    # end-to-end heads: a loss class no released checkpoint in the allowlist holds (E2ELoss on 8.4)
    model = tasks.DetectionModel("yolo26n.yaml" if release() >= (8, 4) else "yolov10n.yaml", verbose=False)
    model.args = get_cfg()
    model.criterion = model.init_criterion()
    torch.save({"model": model, "train_args": {}}, tmp_path / "with_loss.pt")
    ckpt, _ = tasks.torch_safe_load(tmp_path / "with_loss.pt")
    assert type(ckpt["model"].criterion).__name__ == type(model.criterion).__name__
    assert ckpt["model"].criterion.__module__ == "ultralytics.utils.loss"
    if release() >= (8, 4):  # a distillation run's last.pt holds its forward hooks (plain objects, not layers)
        from ultralytics.nn.distill_model import FeatureHook

        torch.save({"model": model, "hooks": [FeatureHook({}, 16)]}, tmp_path / "with_hook.pt")
        assert safe_load(tmp_path / "with_hook.pt")["hooks"][0].idx == 16
    torch.save({"model": model, "metric": Metric()}, tmp_path / "with_metric.pt")
    with pytest.raises(UnsafeCheckpointError, match="ultralytics.utils.metrics.Metric"):
        safe_load(tmp_path / "with_metric.pt")
