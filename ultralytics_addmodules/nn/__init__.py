from . import mobilenetv4, uib  # noqa: F401  (MobileNetV4 backbones, UIB, C3_UIB)
from . import efficientnet, mobilenetv1  # noqa: F401  (MobileNetV1, EfficientNet V1/V2 backbones)
from . import timm_backbone  # noqa: F401  (TimmBackbone: any timm model by name; timm imported lazily)
