"""Deployment: checkpoints that reload in a fresh process, train -> reload -> export round trips, resumed
training, clear checkpoint errors, fused inference (correct and fast) and the benchmark script."""

from __future__ import annotations

import copy
import csv
import json
import re
import statistics
import textwrap
import time

import numpy as np
import pytest
import torch
from helpers import (
    FUSE_REL,
    REPO,
    Float32Reference,
    assert_close_to_scale,
    assert_matches_float32_reference,
    buildable_model_yamls,
    fresh_python,
    make_tiny_dataset,
    randomize_and_calibrate_,
)
from torch import nn
from ultralytics import YOLO

from ultralytics_addmodules.model_yamls import list_model_yamls
from ultralytics_addmodules.nn.common import fuse_modules

TRAIN_ARGS = dict(epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False, seed=0)


def scaled(name: str, scale: str = "n") -> str:
    return re.sub(r"^(yolo(?:v)?\d+)", rf"\g<1>{scale}", name, count=1)


def ours(module: nn.Module) -> bool:
    return type(module).__module__.startswith("ultralytics_addmodules")


# --- train -> reload in a fresh process -> val / predict -> ONNX parity ------------------------------------
RELOAD_AND_EXPORT = textwrap.dedent("""
    import copy, json, os, sys
    import numpy as np, onnxruntime as ort, torch
    from ultralytics import YOLO  # the package is NOT imported here: the installed hook must do it

    out = {}
    for name in ("best.pt", "last.pt"):
        yolo = YOLO(WEIGHTS + "/" + name)
        out[name] = sorted({type(m).__module__ for m in yolo.model.modules()
                            if type(m).__module__.startswith("ultralytics_addmodules")})
    yolo = YOLO(WEIGHTS + "/best.pt")
    metrics = yolo.val(data=DATA, imgsz=64, batch=4, workers=0, device="cpu", plots=False, project=PROJECT)
    out["map50"] = float(metrics.box.map50)
    results = yolo.predict(IMAGE, imgsz=64, device="cpu", verbose=False)
    out["predicted_images"] = len(results)
    onnx_file = yolo.export(format="onnx", imgsz=64, simplify=False)
    xs = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    model = yolo.model.float().eval()
    exact = copy.deepcopy(model).double()  # float64: float32's own rounding noise, for the parity bound
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        arrays = {"float32": [model(x)[0].numpy() for x in xs], "float64": [exact(x.double())[0].numpy() for x in xs],
                  "onnx": [session.run(None, {"images": x.numpy()})[0] for x in xs]}
    os.makedirs(PROJECT, exist_ok=True)
    np.savez(PROJECT + "/parity.npz", **{k: np.stack(v) for k, v in arrays.items()})
    out["hook_imported_package"] = "ultralytics_addmodules" in sys.modules
    print("RESULT " + json.dumps(out))
""")


def roundtrip_yamls() -> list[str]:
    wanted = ("yolo11-MobileNetV4.yaml", "yolo11-EfficientNetV2.yaml", "yolo11-C3_UIB.yaml")
    shipped = {p.name for p in list_model_yamls()}
    return [n for n in wanted if n in shipped]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
@pytest.mark.parametrize("name", roundtrip_yamls())
def test_train_reload_validate_predict_export(name, tiny_data, tmp_path):
    YOLO(scaled(name)).train(data=str(tiny_data), project=str(tmp_path), name="run", exist_ok=True, **TRAIN_ARGS)
    weights = tmp_path / "run" / "weights"
    assert (weights / "best.pt").is_file() and (weights / "last.pt").is_file()
    image = next((tiny_data.parent / "val" / "images").iterdir())
    prelude = (f"WEIGHTS = {str(weights)!r}; DATA = {str(tiny_data)!r}; PROJECT = {str(tmp_path / 'val')!r}; "
               f"IMAGE = {str(image)!r}\n")
    r = fresh_python(prelude + RELOAD_AND_EXPORT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.split("RESULT ", 1)[1])
    for ckpt in ("best.pt", "last.pt"):
        assert result[ckpt], f"{ckpt} reloaded without any of our modules"
    assert result["hook_imported_package"]
    assert 0.0 <= result["map50"] <= 1.0
    assert result["predicted_images"] == 1
    arrays = np.load(tmp_path / "val" / "parity.npz")
    reference = Float32Reference.from_arrays(list(arrays["float32"]), list(arrays["float64"]))
    print(assert_matches_float32_reference(list(arrays["onnx"]), reference, f"{name} trained, reloaded, ONNX"))


# --- a run killed after epoch 1 resumes to the end -----------------------------------------------------------
KILLED_AFTER_FIRST_EPOCH = textwrap.dedent("""
    import os
    from ultralytics import YOLO

    def die(trainer):  # results.csv and last.pt of epoch 1 are written before this callback runs
        if trainer.epoch == 0:
            os._exit(17)

    model = YOLO(MODEL)
    model.add_callback("on_fit_epoch_end", die)
    model.train(data=DATA, project=PROJECT, name="run", exist_ok=True, epochs=2, imgsz=64, batch=4, workers=0,
                device="cpu", plots=False, amp=False, seed=0)
""")

RESUME = textwrap.dedent("""
    from ultralytics import YOLO
    model = YOLO(LAST)
    model.train(resume=True)
    print("RESUMED_TO", model.trainer.epoch + 1, model.trainer.epochs)
""")


def _csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_killed_run_resumes_without_losing_results(tiny_data, tmp_path):
    name = scaled("yolo11-MobileNetV4.yaml")
    prelude = f"MODEL = {name!r}; DATA = {str(tiny_data)!r}; PROJECT = {str(tmp_path)!r}\n"
    r = fresh_python(prelude + KILLED_AFTER_FIRST_EPOCH, cwd=tmp_path)
    assert r.returncode == 17, r.stderr[-3000:]
    run = tmp_path / "run"
    before = _csv_rows(run / "results.csv")
    assert [row["epoch"] for row in before] == ["1"]
    last = run / "weights" / "last.pt"
    r = fresh_python(f"LAST = {str(last)!r}\n" + RESUME, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RESUMED_TO 2 2" in r.stdout
    after = _csv_rows(run / "results.csv")
    assert [row["epoch"] for row in after] == ["1", "2"]
    assert after[0] == before[0]  # the interrupted run's epoch is kept as it was
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == -1 and ckpt["train_args"]["epochs"] == 2  # the finished run's stripped checkpoint
    assert any(ours(m) for m in ckpt["model"].modules())


# --- clear errors for broken checkpoints --------------------------------------------------------------------
def test_corrupt_and_truncated_checkpoint_errors_name_the_file(tmp_path):
    good = tmp_path / "good.pt"
    yolo = YOLO(scaled("yolo11-MobileNetV4.yaml"))
    torch.save({"model": yolo.model, "train_args": {}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00this is not a checkpoint" * 64)
    for bad in (truncated, garbage):  # the stock exception types (RuntimeError, UnpicklingError, ...), clearer text
        with pytest.raises(Exception, match=re.escape(bad.name)) as e:
            YOLO(str(bad))
        assert "corrupt or truncated" in str(e.value)


MISSING_MODULE = textwrap.dedent("""
    import sys
    from ultralytics import YOLO
    BLOCK = {block!r}
    if BLOCK:
        class Blocker:  # makes BLOCK look uninstalled
            def find_spec(self, name, path=None, target=None):
                if name == BLOCK or name.startswith(BLOCK + "."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.modules.pop(BLOCK, None)
        sys.meta_path.insert(0, Blocker())
    import ultralytics.utils.checks as checks, subprocess
    subprocess.check_output = subprocess.run = lambda *a, **k: sys.exit("ATTEMPTED: " + str(a))
    try:
        YOLO({path!r})
    except ModuleNotFoundError as e:
        print("ERROR", type(e).__name__, "|", e)
""")


def test_checkpoint_from_newer_package_names_module_and_pip_command(tmp_path):
    """A checkpoint that pickles a module class this version does not have (e.g. saved by a newer release)."""
    ckpt = tmp_path / "future.pt"
    code = textwrap.dedent(f"""
        import sys, types, torch
        from ultralytics import YOLO
        mod = types.ModuleType("ultralytics_addmodules.nn.future_family")
        class FutureBlock(torch.nn.Identity):
            pass
        FutureBlock.__module__ = mod.__name__
        mod.FutureBlock = FutureBlock
        sys.modules[mod.__name__] = mod
        yolo = YOLO("yolo11n-MobileNetV4.yaml")
        yolo.model.model[5] = torch.nn.Sequential(FutureBlock(), yolo.model.model[5])
        torch.save({{"model": yolo.model, "train_args": {{}}}}, {str(ckpt)!r})
    """)
    r = fresh_python(code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = fresh_python(MISSING_MODULE.format(block="", path=str(ckpt)), cwd=tmp_path)
    assert "ATTEMPTED" not in r.stdout + r.stderr, "Ultralytics tried to pip-install the module"
    assert r.returncode == 0, r.stderr[-3000:]
    message = r.stdout.split("ERROR", 1)[1]
    assert "future.pt" in message and "ultralytics_addmodules.nn.future_family" in message
    assert "pip install -U ultralytics-addmodules" in message


def test_checkpoint_needing_timm_without_timm_names_the_extra(tmp_path):
    timm = pytest.importorskip("timm")
    ckpt = tmp_path / "with_timm.pt"
    yolo = YOLO(scaled("yolo11-MobileNetV4.yaml"))
    yolo.model.model[5] = nn.Sequential(timm.layers.SqueezeExcite(yolo.model.model[5].cv1.conv.in_channels),
                                        yolo.model.model[5])
    torch.save({"model": yolo.model, "train_args": {}}, ckpt)
    r = fresh_python(MISSING_MODULE.format(block="timm", path=str(ckpt)), cwd=tmp_path)
    assert "ATTEMPTED" not in r.stdout + r.stderr, "Ultralytics tried to pip-install timm"
    assert r.returncode == 0, r.stderr[-3000:]
    message = r.stdout.split("ERROR", 1)[1]
    assert "with_timm.pt" in message and "timm" in message
    assert "pip install ultralytics-addmodules[timm]" in message


# --- fused inference --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", buildable_model_yamls("detect"))
def test_fuse_folds_every_batchnorm_in_our_modules(name):
    torch.manual_seed(0)
    model = randomize_and_calibrate_(YOLO(scaled(name)).model)
    targets = [i for i, m in enumerate(model.model) if ours(m)]
    assert targets, f"{name} has none of our modules"
    inputs = {}
    hooks = [model.model[i].register_forward_pre_hook(lambda m, args, i=i: inputs.setdefault(i, args))
             for i in targets]
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)))
        for h in hooks:
            h.remove()
        fused = copy.deepcopy(model).fuse(verbose=False)
        for i in targets:  # each of our modules, unfused vs fused, on the input it saw inside the model
            left = [n for n, m in fused.model[i].named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            assert not left, f"layer {i}: BatchNorm left after fuse(): {left[:5]}"
            a, b = model.model[i](*inputs[i]), fused.model[i](*inputs[i])
            assert_close_to_scale(b, a, FUSE_REL, f"{name} layer {i} fused", min_scale=0.1)


def _fold_timm_batchnorm_(model: nn.Module) -> nn.Module:
    """Fold each timm BatchNormAct2d into the Conv2d registered right before it (timm's conv/bn layout),
    keeping the activation. For the speed print only; outputs are checked against the unfused model."""
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features:
                setattr(parent, conv_name, fuse_conv_and_bn(conv, bn))
                keep = [getattr(bn, part, nn.Identity()) for part in ("drop", "act")]
                setattr(parent, bn_name, nn.Sequential(*keep))
    return model


def _interleaved_median_ms(models: dict, x: torch.Tensor, repeats: int = 25) -> dict:
    times = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(3):
                m(x)
        for _ in range(repeats):
            for k, m in models.items():
                start = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


@pytest.mark.slow
def test_fused_backbone_at_least_as_fast_as_timm():
    timm = pytest.importorskip("timm")
    from ultralytics_addmodules.nn.mobilenetv4 import MobileNetV4ConvSmall

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed, and fair to helpers running beside us
    try:
        torch.manual_seed(0)
        mine = MobileNetV4ConvSmall(3, 1.0).eval()
        assert fuse_modules(mine) > 0
        ref = timm.create_model("mobilenetv4_conv_small", pretrained=False, features_only=True,
                                out_indices=(1, 2, 3, 4)).eval()
        ref_folded = _fold_timm_batchnorm_(copy.deepcopy(randomize_and_calibrate_(ref)))
        x = torch.rand(1, 3, 224, 224)
        with torch.no_grad():
            assert_close_to_scale(ref_folded(x), ref(x), FUSE_REL, "timm features, BatchNorm folded")
        assert not any(isinstance(m, nn.BatchNorm2d) for m in ref_folded.modules())
        ms = _interleaved_median_ms({"ours_fused": mine, "timm": ref, "timm_folded": ref_folded}, x)
    finally:
        torch.set_num_threads(threads)
    ratio = ms["ours_fused"] / ms["timm"]
    print(f"\nMobileNetV4ConvSmall 224x224, 1 thread, median ms: ours fused {ms['ours_fused']:.2f}, "
          f"timm unfused {ms['timm']:.2f} (ratio {ratio:.3f}), timm BN-folded {ms['timm_folded']:.2f} "
          f"(ratio {ms['ours_fused'] / ms['timm_folded']:.3f}, not asserted)")
    assert ratio <= 1.1


# --- benchmark script ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_benchmark_script_runs_with_tiny_settings(tmp_path):
    models = ["yolo11n.yaml", scaled("yolo11-MobileNetV4.yaml")]
    r = fresh_python(
        f"import sys, runpy; sys.argv = ['run.py', '--quick', '--imgsz', '32', '--no-accuracy', '--runtimes', "
        f"'pytorch,ort', '--models', {', '.join(repr(m) for m in models)}]; "
        f"runpy.run_path({str(REPO / 'benchmarks' / 'run.py')!r}, run_name='__main__')", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout.split("### Latency at 32x32", 1)[1]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header, rows = cells[0], {row[0]: row for row in cells[2:]}
    ratio_columns = [i for i, title in enumerate(header) if title == "x"]
    assert len(ratio_columns) == 2, header  # PyTorch fused, ONNX Runtime fp32
    assert sorted(rows) == sorted(models), list(rows)
    assert all(rows["yolo11n.yaml"][i] == "1.00" for i in ratio_columns)
    for i in ratio_columns:
        assert float(rows[models[1]][i]) > 0, (header[i], rows[models[1]])
    assert "Latency protocol:" in r.stdout and "interleaved" in r.stdout
