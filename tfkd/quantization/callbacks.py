"""Callbacks that change quantization-aware training mid-`fit`.

They flip variables, never Python attributes: `fit` traces its train step once, and a Python
flag would stay baked into that trace (and into cached predict functions).
"""

import keras

from tfkd.quantization.calibration import quantized_layers


def set_quantization_enabled(model, enabled=True):
    """Turn every fake-quant of a quantization-aware model on or off (ranges keep tracking).

    Off, the model computes in float with folded BatchNormalization: useful to check that
    the rewrite is exact, or to train in float first (see `StartQuantization`).
    """
    layers = quantized_layers(model)
    if not layers:
        raise ValueError(
            f"'{getattr(model, 'name', model)}' has no tfkd.quantization layers: "
            "call tfkd.quantization.quantize_model on it first.")
    for layer in layers:
        layer.quant_enabled.assign(1.0 if enabled else 0.0)


def set_ranges_frozen(model, frozen=True):
    """Stop (or resume) the moving-average updates of every activation range."""
    for layer in quantized_layers(model):
        if hasattr(layer, "range_frozen"):
            layer.range_frozen.assign(1.0 if frozen else 0.0)


def _check_epoch(epoch):
    if int(epoch) != epoch or epoch < 0:
        raise ValueError(f"epoch={epoch!r}: expected a non-negative integer (0-based).")
    return int(epoch)


class StartQuantization(keras.callbacks.Callback):
    """Train in float (folded BN, ranges tracking) and switch fake-quant on at `epoch`.

    Example: `qat.fit(ds, epochs=6, callbacks=[StartQuantization(epoch=2)])` trains epochs 0-1
    in float and 2-5 quantization-aware. Works on a `Distiller` too: it finds the student's
    quantized layers through `model.layers`.
    """

    def __init__(self, epoch=1):
        super().__init__()
        self.epoch = _check_epoch(epoch)

    def on_epoch_begin(self, epoch, logs=None):
        set_quantization_enabled(self.model, epoch >= self.epoch)


class FreezeQuantizationRanges(keras.callbacks.Callback):
    """Stop updating activation ranges from `epoch` on (the weights keep training).

    Late in QAT the ranges have settled; freezing them lets the weights adapt to a fixed int8
    grid. Example: `qat.fit(ds, epochs=5, callbacks=[FreezeQuantizationRanges(epoch=3)])`.
    """

    def __init__(self, epoch=1):
        super().__init__()
        self.epoch = _check_epoch(epoch)

    def on_epoch_begin(self, epoch, logs=None):
        set_ranges_frozen(self.model, epoch >= self.epoch)
