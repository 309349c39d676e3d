"""Initialize activation ranges from a few batches before quantization-aware training.

Ranges that start at the +-6 placeholder waste most of the int8 grid on the first steps;
measured ones let QAT start from a model that is already close to its int8 self.
"""

import itertools

import numpy as np
import keras

from tfkd.quantization.layers import QUANTIZED_LAYERS, link_shared_ranges


def quantized_layers(model):
    """Every `tfkd.quantization` layer inside `model`, nested models and wrappers included."""
    found, seen, stack = [], set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, QUANTIZED_LAYERS):
            found.append(layer)
        stack.extend(getattr(layer, "layers", None) or [])
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.Layer):
            stack.append(inner)
    return found


def _ranged(model):
    return [l for l in quantized_layers(model) if hasattr(l, "range_min")]


def _batches(data, steps, batch_size):
    """Input batches from numpy, a tf.data.Dataset or an iterable, dropping any labels."""
    if isinstance(data, np.ndarray) or (hasattr(data, "shape") and hasattr(data, "dtype")
                                        and not hasattr(data, "element_spec")):
        data = np.asarray(data)
        return [data[i:i + batch_size] for i in range(0, min(len(data), steps * batch_size),
                                                      batch_size)]
    batches = []
    for batch in itertools.islice(iter(data), steps):
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batches.append(batch)
    return batches


def calibrate(model, data, steps=8, batch_size=32):
    """Set every activation range of a quantization-aware model from `steps` batches of `data`.

    Each range becomes the mean over batches of the per-batch min / max of the float
    activations (fake-quant off), which is where the training-time moving average converges.
    `quantize_model(..., calibration_data=...)` calls this; call it again after changing the
    data distribution.

    Example:

    ```python
    import numpy as np, keras
    from tfkd.quantization import quantize_model, calibrate

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    qat = quantize_model(keras.Model(inputs, outputs))
    calibrate(qat, np.random.rand(32, 8, 8, 3).astype("float32"), steps=2)
    print(float(qat.get_layer("conv").range_max))   # measured, not the +-6 placeholder
    ```
    """
    batches = _batches(data, int(steps), int(batch_size))
    if not batches:
        raise ValueError("calibrate: the calibration data is empty; pass a few batches of "
                         "typical inputs (numpy array, tf.data.Dataset or iterable).")
    link_shared_ranges(model)
    layers = quantized_layers(model)
    ranged = _ranged(model)
    enabled = [keras.ops.convert_to_numpy(l.quant_enabled) for l in layers]
    decays = [keras.ops.convert_to_numpy(l.range_decay) for l in ranged]
    frozen = [keras.ops.convert_to_numpy(l.range_frozen) for l in ranged]
    try:
        for l in layers:
            l.quant_enabled.assign(0.0)
        for l in ranged:
            l.range_initialized.assign(0.0)
            l.range_frozen.assign(0.0)
        for t, batch in enumerate(batches):
            # Running mean: decay t/(t+1) weighs every batch equally.
            for l in ranged:
                l.range_decay.assign(t / (t + 1.0))
            model(batch, training=True)
    finally:
        for l, e in zip(layers, enabled):
            l.quant_enabled.assign(e)
        for l, d, f in zip(ranged, decays, frozen):
            l.range_decay.assign(d)
            l.range_frozen.assign(f)
    return model
