"""Learned upsampling for super-resolution students, and what each way costs on the Edge TPU.

`upsample(x, scale, filters, method=...)` enlarges a feature map `scale` times (2, 3 or 4)
and returns `filters` channels after a BatchNormalization and a ReLU, in one of three ways.
All of them quantize with `tfkd.quantization.quantize_model` into a fully int8 `.tflite`
whose outputs match the Keras QAT model to a fraction of an LSB; they differ in where the
file runs. Op by op, as TF 2.21's converter writes them and `tfkd.tflite.check_edgetpu`
judges them against Coral's table:

- `"transpose"`: `Conv2DTranspose(filters, 2 * scale, strides=scale, padding="same")`
  -> BatchNormalization -> ReLU. TRANSPOSE_CONV (per-output-channel int8 weights, the BN
  folded into them), then RELU: the converter fuses no activation into a transposed conv, so
  the ReLU is an int8 op of its own (sharing its input's scale, so it only clamps). Both are
  in Coral's table: the whole graph can run on the Edge TPU. A kernel that is a multiple of
  the stride gives every output pixel the same number of taps (no checkerboard from uneven
  overlap).
- `"pixel_shuffle"`: `Conv2D(filters * r * r, 3)` -> BatchNormalization -> ReLU ->
  `PixelShuffle(r)` (ESPCN's sub-pixel convolution; scale 4 is two x2 stages, so that the
  widest tensor has `4 * filters` channels rather than `16 * filters`). CONV_2D with BN
  folded and ReLU fused, then DEPTH_TO_SPACE, int8 on its input's scale (exact, no
  rounding). DEPTH_TO_SPACE is not in Coral's table: the compiler cuts the graph there and
  it and every op after it run on the CPU. The cheapest way on a CPU / GPU delegate; on the
  Edge TPU use `"transpose"`.
- `"resize"`: `UpSampling2D(scale, interpolation="bilinear")` -> `Conv2D(filters, 3)` ->
  BatchNormalization -> ReLU. RESIZE_BILINEAR (int8, on its input's scale) then CONV_2D with
  BN folded and ReLU fused. Both are mapped, but the resize is *uncertain*: Keras' bilinear
  upsampling uses half-pixel centers (op version 3), which Edge TPU compilers 14 and 15
  refused ("Operation version not supported"); `check_edgetpu` counts it as mapped and
  warns. Its conv works at the high resolution: `scale ** 2` times the MACs of the others.

Every method takes inputs of any height and width (`keras.Input((None, None, c))`), as SR
models do. `"transpose"` and `"pixel_shuffle"` models also convert with dynamic sizes;
`"resize"` ones only from a fixed-size input (Keras 3.15's bilinear `UpSampling2D` fails to
export on dynamic dims), and an Edge TPU file needs a fixed size whatever the method.

Parity of the int8 file with the Keras QAT model, measured on a tiny x2 SR net (tests/
quantization/test_upsampling_qat.py): "transpose" 0.03 LSB mean, "pixel_shuffle" 0.02,
"resize" 0.69 (RESIZE_BILINEAR rounds ties in a way fake-quant cannot simulate; see
`tfkd.quantization.transform`).
Layers are named `{name}_transpose` / `{name}_conv` / `{name}_resize`, `{name}_bn`, and the
returned tensor's layer is `name` itself (for taps). Scale 4 with `"pixel_shuffle"` names its
stages `{name}_1_*` and `{name}_2_*`.

    >>> import numpy as np, keras
    >>> from tfkd.students.upsampling import METHODS, PixelShuffle, upsample
    >>> PixelShuffle(2)(np.arange(8.0).reshape(1, 1, 1, 8)).shape  # 2x2 pixels, 2 channels
    TensorShape([1, 2, 2, 2])
    >>> inputs = keras.Input((None, None, 1))
    >>> x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    >>> model = keras.Model(inputs, [upsample(x, 2, 4, method=m, name=m) for m in METHODS])
    >>> [y.shape for y in model.predict(np.zeros((1, 5, 7, 1)), verbose=0)]
    [(1, 10, 14, 4), (1, 10, 14, 4), (1, 10, 14, 4)]
"""
import keras
import tensorflow as tf
from keras import layers

METHODS = ("transpose", "pixel_shuffle", "resize")
SCALES = (2, 3, 4)


@keras.saving.register_keras_serializable(package="tfkd")
class PixelShuffle(keras.layers.Layer):
    """Depth to space, channels-last: (N, H, W, C * s * s) -> (N, H * s, W * s, C).

    Output pixel (h * s + i, w * s + j), channel k, is input pixel (h, w), channel
    (i * s + j) * C + k: `tf.nn.depth_to_space`, which TFLite runs as DEPTH_TO_SPACE (int8 on
    its input's scale; not mapped to the Edge TPU). `tfkd.quantization` treats it as a
    same-scale op: no fake-quant of its own.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
            raise ValueError(f"PixelShuffle: scale must be an int >= 2, got {scale!r}.")
        self.scale = scale

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"PixelShuffle '{self.name}' needs an (N, H, W, C) input; got "
                             f"shape {tuple(input_shape)}.")
        channels = input_shape[-1]
        if channels is None or channels % (self.scale ** 2):
            raise ValueError(
                f"PixelShuffle '{self.name}': {channels} input channels are not a multiple "
                f"of scale ** 2 = {self.scale ** 2}; give the conv before it "
                f"filters * {self.scale ** 2} channels.")

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.scale, data_format="NHWC")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        s = self.scale
        return (n, None if h is None else h * s, None if w is None else w * s,
                None if c is None else c // (s * s))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def upsample(x, scale, filters, method="transpose", name="upsample", momentum=0.99):
    """`x` enlarged `scale` times with `filters` output channels (see the module docstring).

    Args:
        x: a channels-last feature tensor (N, H, W, C); H and W may be None.
        scale: 2, 3 or 4.
        filters: channels of the returned tensor.
        method: "transpose" (Edge TPU end to end), "pixel_shuffle" (DEPTH_TO_SPACE: cuts the
            Edge TPU graph) or "resize" (bilinear UpSampling2D + conv).
        name: prefix of the layers; the returned tensor's layer is named `name`.
        momentum: momentum of the BatchNormalization layers.

    Returns:
        The (N, H * scale, W * scale, filters) tensor, after BatchNormalization and ReLU.

    Raises:
        ValueError: an unknown `method`, a `scale` not in (2, 3, 4), or `filters` < 1.
    """
    if method not in METHODS:
        raise ValueError(f"upsample: method={method!r} is not one of {METHODS} "
                         "('transpose' maps to the Edge TPU end to end).")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SCALES:
        raise ValueError(f"upsample: scale={scale!r} is not one of {SCALES}; for larger "
                         "factors chain upsample calls (e.g. 8 = 2 x 4).")
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(f"upsample: filters={filters!r} must be a positive int.")

    if method == "transpose":
        x = layers.Conv2DTranspose(filters, 2 * scale, strides=scale, padding="same",
                                   use_bias=False, name=f"{name}_transpose")(x)
        x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
        return layers.ReLU(name=name)(x)
    if method == "resize":
        x = layers.UpSampling2D(scale, interpolation="bilinear", name=f"{name}_resize")(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
        return layers.ReLU(name=name)(x)
    # pixel_shuffle: ReLU before the shuffle (the same function, since both act per value),
    # so that it fuses into the conv.
    stages = (2, 2) if scale == 4 else (scale,)
    for i, r in enumerate(stages):
        last = i == len(stages) - 1
        prefix = name if len(stages) == 1 else f"{name}_{i + 1}"
        x = layers.Conv2D(filters * r * r, 3, padding="same", use_bias=False,
                          name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(momentum=momentum, name=f"{prefix}_bn")(x)
        x = layers.ReLU(name=f"{prefix}_relu")(x)
        x = PixelShuffle(r, name=name if last else f"{prefix}_shuffle")(x)
    return x
