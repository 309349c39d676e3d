"""How closely a `.tflite` follows its Keras model.

For quantized outputs the error is given in LSB (units of the output scale): a mean below one
LSB means the int8 graph computes what the Keras (QAT) model computes, up to rounding. For
float outputs it is the absolute error.

Agreement of decisions: `top1_agreement` is the fraction of positions where the argmax over
the last (class) axis is the same in both models. A classifier has one position per sample,
so it is the share of samples given the same class; a dense output (H, W, C) per sample has
one per pixel, so it is the share of pixels, and `pixel_agreement` (None for non-dense
outputs) says so by name. Neither looks at labels: parity compares the two models, not either
with the truth (that is `evaluate`).

Example:

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = tfl.convert(m, "/tmp/p.tflite")
    >>> r = tfl.parity(m, "/tmp/p.tflite", np.random.rand(10, 4).astype("float32"))
    >>> r["top1_agreement"], r["num_samples"]
    (1.0, 10)
"""
from __future__ import annotations

import numpy as np

from .errors import TFLiteError
from .evaluate import Runner, input_values, run_on_data


def parity(keras_model, model, data, max_samples=1000, batch_size=64, output_index=0):
    """Compares a Keras model with a `.tflite` on the same inputs.

    Args:
      keras_model: the Keras model the file came from (a QAT model for "qat" files).
      model: path to the `.tflite` (or its bytes).
      data: inputs (labels, if any, are ignored); see `tfkd.tflite.data`.
      max_samples: how many samples to compare.

    Raises:
      TFLiteError: the Keras model's output does not have the file's width.

    Returns:
      dict: num_samples; top1_agreement (argmax agreement over the class axis, per sample
      for classifiers and per pixel for dense outputs; None for single-value outputs);
      pixel_agreement (dense outputs, (H, W, C) per sample: the fraction of pixels whose
      argmax matches; None otherwise); mean_abs_error and max_abs_error (float units);
      output_scale, mean_lsb, max_lsb (None for float outputs).

    Example, a dense output:

        >>> import numpy as np, keras, tfkd.tflite as tfl
        >>> seg = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 1)])
        >>> _ = tfl.convert(seg, "/tmp/pseg.tflite")
        >>> r = tfl.parity(seg, "/tmp/pseg.tflite", np.random.rand(5, 6, 6, 3))
        >>> r["pixel_agreement"] == r["top1_agreement"] == 1.0
        True
    """
    runner = Runner(model, output_index=output_index)
    xs, tfl_out, _ = run_on_data(runner, data, max_samples=max_samples)
    # The Keras model takes the values the data stands for: int8 / uint8 data in the file's
    # own input dtype is already quantized and is dequantized for it (see quantize_input).
    keras_out = keras_model.predict(input_values(xs, runner.input), batch_size=batch_size,
                                    verbose=0)
    if isinstance(keras_out, (list, tuple)):
        keras_out = keras_out[output_index]
    elif isinstance(keras_out, dict):
        keras_out = list(keras_out.values())[output_index]
    keras_out = np.asarray(keras_out, dtype=np.float32)
    if keras_out.size != tfl_out.size:
        raise TFLiteError(
            f"The Keras model's output {output_index} has shape {tuple(keras_out.shape[1:])} "
            f"per sample (width {keras_out.shape[-1] if keras_out.ndim > 1 else 1}) but the "
            f".tflite file's has {tuple(tfl_out.shape[1:])} (width "
            f"{tfl_out.shape[-1] if tfl_out.ndim > 1 else 1}): pass the Keras model the file "
            "was converted from (the quantization-aware model for a 'qat' file), or pick the "
            "matching output with output_index=.")
    keras_out = keras_out.reshape(tfl_out.shape)
    err = np.abs(keras_out - tfl_out)
    detail = runner.output
    scale = detail["quantization"][0] if np.dtype(detail["dtype"]).kind in "iu" else 0.0
    top1 = None
    if tfl_out.ndim >= 2 and tfl_out.shape[-1] > 1:
        top1 = float(np.mean(np.argmax(keras_out, -1) == np.argmax(tfl_out, -1)))
    dense = tfl_out.ndim - 1 >= 3  # (H, W, C) per sample
    return {
        "num_samples": int(len(xs)),
        "top1_agreement": top1,
        "pixel_agreement": top1 if dense else None,
        "mean_abs_error": float(err.mean()),
        "max_abs_error": float(err.max()),
        "output_scale": float(scale) if scale else None,
        "mean_lsb": float(err.mean() / scale) if scale else None,
        "max_lsb": float(err.max() / scale) if scale else None,
    }


__all__ = ["parity"]
