"""Native Keras 3 quantization-aware training that converts to fully int8 TFLite.

```python
from tfkd.quantization import quantize_model, FreezeQuantizationRanges
qat = quantize_model(student, calibration_data=x_train[:256])
qat.compile(...); qat.fit(x, y, epochs=2, callbacks=[FreezeQuantizationRanges(epoch=1)])
```
"""

from tfkd.quantization.calibration import calibrate, quantized_layers
from tfkd.quantization.callbacks import (
    FreezeQuantizationRanges,
    StartQuantization,
    set_quantization_enabled,
    set_ranges_frozen,
)
from tfkd.quantization.transform import UnsupportedLayerError, quantize_model


def is_quantized(model):
    """True when `model` (or a model nested in it) contains tfkd.quantization layers."""
    return bool(quantized_layers(model))


__all__ = [
    "quantize_model",
    "calibrate",
    "is_quantized",
    "quantized_layers",
    "set_quantization_enabled",
    "set_ranges_frozen",
    "StartQuantization",
    "FreezeQuantizationRanges",
    "UnsupportedLayerError",
]
