"""`L2Normalization`: the embedding head's L2 normalisation as TFLite's L2_NORMALIZATION op.

Keras' own `UnitNormalization` computes `x * rsqrt(max(sum(x ** 2), eps))` with Keras ops,
which the TFLite converter (TF 2.21) lowers to SQUARE, SUM, RSQRT, MINIMUM and MUL; an int8
conversion leaves those in float, between a DEQUANTIZE and a QUANTIZE (measured), so the
file is not fully int8 and `tfkd.tflite.convert` refuses it. `tf.math.l2_normalize` is
matched by the converter to the builtin L2_NORMALIZATION, which has an int8 kernel (output
scale 1/128, zero point 0, as TFLite fixes it) and is on the Edge TPU's list of mapped ops.
This layer calls it; in Keras it computes what `UnitNormalization` computes (up to the
epsilon that guards a zero vector).

Example:

    >>> import numpy as np, keras, tfkd.tflite as tfl
    >>> head = keras.Sequential([keras.Input((4,)), tfl.L2Normalization()])
    >>> np.asarray(head(np.array([[3.0, 4.0, 0.0, 0.0]])), "float64").round(3).tolist()
    [[0.6, 0.8, 0.0, 0.0]]
"""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfkd.tflite")
class L2Normalization(keras.layers.Layer):
    """`x / max(||x||_2, sqrt(epsilon))` along `axis`: a `UnitNormalization` that converts
    to TFLite's L2_NORMALIZATION (int8 included). `axis` must be the last one for the
    TFLite op (the converter leaves other axes as float arithmetic)."""

    def __init__(self, axis=-1, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = float(epsilon)

    def call(self, x):
        import tensorflow as tf

        return tf.math.l2_normalize(x, axis=self.axis, epsilon=self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}


__all__ = ["L2Normalization"]
