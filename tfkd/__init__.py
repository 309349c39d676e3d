"""tfkd: knowledge distillation for Keras 3, from `model.fit` to an int8 TFLite student.

    import tfkd
    distiller = tfkd.Distiller(student, teacher, knowledge=[tfkd.knowledge.SoftTargets()])

`tfkd.tflite` (converters, Edge TPU checks, .tflite evaluation) and `tfkd.quantization`
(quantization-aware training) are imported on first use: they pull in LiteRT and the
quantization layers, which plain training does not need.
"""
import importlib

from tfkd import knowledge
from tfkd import training
from tfkd.anchors import Anchors
from tfkd.distiller import Distiller

__version__ = "0.1.0"
__all__ = ["Distiller", "Anchors", "knowledge", "training", "quantization", "schemes", "tflite", "distribute", "data"]


def __getattr__(name):
    if name in ("quantization", "schemes", "tflite", "distribute", "data"):
        return importlib.import_module(f"tfkd.{name}")
    raise AttributeError(f"module 'tfkd' has no attribute {name!r}")
