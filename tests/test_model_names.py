"""'Did you mean' for model YAML names: suggest_model_names and train.py's model-not-found line."""

from __future__ import annotations


import pytest
from helpers import load_script

from ultralytics_addmodules.model_yamls import official_model_yamls, suggest_model_names


@pytest.mark.parametrize(
    "typed, expected",
    [
        ("yolo11n-mobilenetv4.yaml", ["yolo11n-MobileNetV4.yaml"]),  # case only: the one real name
        ("YOLO11S-C3_UIB.YAML", ["yolo11s-C3_UIB.yaml"]),
        ("yolo11-efficientnetv2.yaml", ["yolo11-EfficientNetV2.yaml"]),
        ("yolo11n-seg-mobilenetv4", ["yolo11n-seg-MobileNetV4.yaml"]),  # no suffix, task YAML
        ("Yolo11N.yaml", ["yolo11n.yaml"]),  # an official Ultralytics name
        ("yolov8m-CLS.yaml", ["yolov8m-cls.yaml"]),
        ("yolov9S.yaml", ["yolov9s.yaml"]),  # an official file whose own name carries the scale
        ("RTDETR-L.yaml", ["rtdetr-l.yaml"]),
        ("models/yolo11x-MOBILENETV1.yaml", ["yolo11x-MobileNetV1.yaml"]),  # a folder in front is ignored
    ],
)
def test_wrong_case_suggests_the_real_name(typed, expected):
    assert suggest_model_names(typed) == expected


def test_misspelling_suggests_close_names_best_first():
    got = suggest_model_names("yolo11n-MobilNetV4.yaml")
    assert got[0] == "yolo11n-MobileNetV4.yaml" and 1 <= len(got) <= 3
    assert suggest_model_names("yolo11s-efficentnetv1.yaml")[0] == "yolo11s-EfficientNetV1.yaml"
    assert suggest_model_names("yolo11n-C3UIB.yaml", n=1) == ["yolo11n-C3_UIB.yaml"]


def test_nothing_close_gives_nothing():
    assert suggest_model_names("my_cat_photo.yaml") == []


def test_official_names_come_from_the_installed_ultralytics():
    import ultralytics

    names = {p.name for p in official_model_yamls()}
    assert {"yolo11.yaml", "yolo11-seg.yaml", "yolov8.yaml"} <= names
    assert all(str(p).startswith(str(ultralytics.__path__[0])) for p in official_model_yamls())


def load_train_script():
    module = load_script("train.py", "train_script")
    return module


@pytest.mark.parametrize(
    "model, fragments",
    [
        ("yolo11n-mobilenetv4.yaml", [
            "找不到模型 yolo11n-mobilenetv4.yaml", "你是不是想用：yolo11n-MobileNetV4.yaml",
            "model not found: yolo11n-mobilenetv4.yaml; did you mean: yolo11n-MobileNetV4.yaml",
        ]),
        ("nothing_like_it.yaml", ["找不到模型 nothing_like_it.yaml", "model not found: nothing_like_it.yaml; valid:"]),
    ],
)
def test_train_script_model_not_found_is_one_bilingual_line(model, fragments, capsys, tmp_path):
    train = load_train_script()
    with pytest.raises(SystemExit) as e:
        train.main(["--model", model, "--project", str(tmp_path / "runs")])
    assert e.value.code == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: 找不到模型")
    assert " | model not found" in errors[0]
    for fragment in fragments:
        assert fragment in errors[0]
    assert not (tmp_path / "runs").exists()


def test_yolo_api_suggests_the_real_name():
    from ultralytics import YOLO

    with pytest.raises(FileNotFoundError) as e:
        YOLO("yolo11n-mobilenetv4.yaml")
    assert "yolo11n-MobileNetV4.yaml" in str(e.value) and "\n" not in str(e.value)
