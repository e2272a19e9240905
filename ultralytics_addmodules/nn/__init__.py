from . import mobilenetv4, uib  # noqa: F401  (MobileNetV4 backbones, UIB, C3_UIB)
