"""Super-resolution students and teachers: a low-resolution image in, an image `scale` x larger out.

Conventions (every SR model of tfkd, and what `tfkd.data.super_resolution` and
`tfkd.tflite.sr_scores` expect): the input is float pixels in [0, 255] of shape
(N, h, w, C), C = 1 (the Y channel, as SR papers train and score) or 3 (RGB), with any
height and width (`input_shape=(None, None, C)`, the default); the output is float pixels
on the same [0, 255] scale, (N, h * scale, w * scale, C), not clipped inside the model
(scoring clips and rounds). Like the other students, the scaling is the first layer
(`Rescaling(1/255)`), so an int8 `.tflite` takes uint8 pixels, and the last
(`Rescaling(255)`, named `sr`), so it can return uint8 pixels.

The student, `fsrcnn` (C. Dong, C. C. Loy, X. Tang, "Accelerating the Super-Resolution
Convolutional Neural Network", ECCV 2016), works at the low resolution and upsamples once at
the end:

==========  =======================================================  ==================
tap         layers (channels at width 1)                             resolution
==========  =======================================================  ==================
`features`  Rescaling(1/255), 5x5 Conv + ReLU (56)                   LR
            1x1 Conv + ReLU "shrink" (12), 4 x 3x3 Conv + ReLU (12)  LR
`mapping`   1x1 Conv + ReLU "expand" (56)                            LR
            upsampler (`tfkd.students.upsampling`, 12) + BN + ReLU   HR
            3x3 Conv "reconstruct" to C channels                     HR
`sr`        + bilinear upsampling of the input (global skip), x255   HR
==========  =======================================================  ==================

ReLU instead of FSRCNN's PReLU (PReLU is not an Edge TPU op; ReLU fuses into the int8
conv), and the upsampler of `tfkd.students.upsampling` (a 2s x 2s transposed conv with
BatchNormalization and ReLU, then a 3x3 conv to C channels) instead of FSRCNN's 9x9
deconvolution to C channels. The global skip makes the network learn the residual over
bilinear upsampling (a transposed conv set to the bilinear kernel, `bilinear_kernel`, and an
ADD: int8 and Edge TPU ops), which trains in far fewer steps than predicting the whole
image; `global_skip=False` gives the paper's plain network. `width` scales every channel
count; `count_params()` at x2, C = 1 (BN statistics included): see the example.

The teacher, `edsr` (B. Lim, S. Son, H. Kim, S. Nah, K. M. Lee, "Enhanced Deep Residual
Networks for Single Image Super-Resolution", CVPRW 2017): a 3x3 head conv (`features`),
`blocks` residual blocks of Conv-ReLU-Conv without BatchNormalization (EDSR's point: BN
hurts SR), a body conv plus the long skip (`body`), the pixel-shuffle upsampler and a 3x3
conv to C channels, plus the same bilinear global skip. Its taps sit at the low resolution
like the student's, so `Hint("mapping", "body")` and
`FeatureAffinityKD(student_layer="mapping", teacher_layer="body")` compare maps of equal
size (Hint adds its 1x1 adapter for the channel gap).

Upsamplers (`upsampler=`, see `tfkd.students.upsampling`): "transpose" (Conv2DTranspose,
the default for the student: an int8 TRANSPOSE_CONV that the Edge TPU maps), "pixel_shuffle"
(conv + DEPTH_TO_SPACE: int8 on CPU / GPU delegates, not an Edge TPU op; the teacher's
default, as it is never exported) and "resize" (bilinear upsampling + conv).

    >>> import numpy as np, tfkd.students.super_resolution as sr
    >>> student = sr.fsrcnn(scale=2)
    >>> student.count_params()
    19025
    >>> student.predict(np.zeros((1, 12, 10, 1), "float32"), verbose=0).shape
    (1, 24, 20, 1)
"""
import keras
import numpy as np
from keras import layers

from tfkd.students import upsampling

SCALES = upsampling.SCALES  # every scale the upsamplers build


def _check(input_shape, scale, name):
    if scale not in SCALES:
        raise ValueError(f"{name}: `scale` must be one of {SCALES}, got {scale!r}.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ValueError(
            f"{name}: `input_shape` must be (height, width, channels) with 1 channel (Y) or 3 "
            f"(RGB), height and width None for any size; got {input_shape}.")
    for side in input_shape[:2]:
        if side is not None and side < 4:
            raise ValueError(f"{name}: input sides must be >= 4 pixels (or None), got "
                             f"{input_shape}.")
    return input_shape


def _conv_relu(x, filters, kernel, name):
    x = layers.Conv2D(filters, kernel, padding="same", name=f"{name}_conv")(x)
    return layers.ReLU(name=name)(x)


def _channels(base, width):
    return max(4, int(round(base * width)))


def bilinear_kernel_size(scale):
    """2s for an even scale, 2s - 1 for an odd one: the sizes whose tent, with "same"
    padding, lines up with half-pixel centres (measured at x2, x3, x4)."""
    return 2 * scale if scale % 2 == 0 else 2 * scale - 1


def bilinear_kernel(scale, channels):
    """The Conv2DTranspose kernel (k, k, channels, channels), k = `bilinear_kernel_size`, that is bilinear
    upsampling: a tent filter per channel, centred so that, with strides=scale and "same"
    padding, it equals `tf.image.resize(..., "bilinear")` (half-pixel centres) away from the
    border (measured: max |difference| 1.2e-7 at x2)."""
    k = bilinear_kernel_size(scale)
    tent = np.maximum(0.0, 1.0 - np.abs(np.arange(k) - (k - 1) / 2.0) / scale)
    return (np.outer(tent, tent)[:, :, None, None] *
            np.eye(channels)[None, None]).astype("float32")


def _reconstruct(x, channels, global_skip):
    """The last conv, to C channels. With the global skip it starts at zero, so that a new
    model is bilinear upsampling (about 32 dB on Set5 x2) rather than noise around it, and
    the first steps refine the residual instead of undoing a random one (the zero-init of a
    residual branch's last layer)."""
    init = "zeros" if global_skip else "glorot_uniform"
    return layers.Conv2D(channels, 3, padding="same", kernel_initializer=init,
                         name="reconstruct")(x)


def _output(x, scaled_input, scale, global_skip):
    """Adds the bilinear upsampling of the input (the residual's base) and rescales to pixels.

    The upsampling is a Conv2DTranspose set to the bilinear kernel, not `UpSampling2D`:
    Keras 3.15's bilinear UpSampling2D does not convert to TFLite at a dynamic input size
    (the SR export's), and a TRANSPOSE_CONV quantizes and maps to the Edge TPU. It stays
    trainable (a free linear path from the input; it starts as bilinear)."""
    if global_skip:
        skip = layers.Conv2DTranspose(scaled_input.shape[-1], bilinear_kernel_size(scale),
                                      strides=scale,
                                      padding="same", use_bias=False, name="skip_upsample")
        base = skip(scaled_input)
        skip.set_weights([bilinear_kernel(scale, scaled_input.shape[-1])])
        x = layers.Add(name="residual_add")([x, base])
    return layers.Rescaling(255.0, name="sr")(x)


def fsrcnn(input_shape=(None, None, 1), scale=2, width=1.0, mapping_layers=4,
           upsampler="transpose", global_skip=True, name="fsrcnn"):
    """The FSRCNN-family student (see the module docstring for the layers and taps).

    Args:
        input_shape: (height, width, channels); None sides for any size, channels 1 or 3.
        scale: 2, 3 or 4.
        width: multiplier of the channel counts (56 / 12 at width 1).
        mapping_layers: number of 3x3 mapping convs (FSRCNN's m; 4).
        upsampler: "transpose", "pixel_shuffle" or "resize".
        global_skip: add the bilinear upsampling of the input (learn the residual).
    """
    input_shape = _check(input_shape, scale, "fsrcnn")
    if int(mapping_layers) != mapping_layers or mapping_layers < 1:
        raise ValueError(f"fsrcnn: `mapping_layers` must be an integer >= 1, got "
                         f"{mapping_layers!r}.")
    d, s = _channels(56, width), _channels(12, width)
    inputs = keras.Input(input_shape, name="lr")
    scaled = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = _conv_relu(scaled, d, 5, "features")
    x = _conv_relu(x, s, 1, "shrink")
    for i in range(int(mapping_layers)):
        x = _conv_relu(x, s, 3, f"map{i + 1}")
    x = _conv_relu(x, d, 1, "mapping")
    x = upsampling.upsample(x, scale, s, method=upsampler, name="upsample")
    x = _reconstruct(x, input_shape[-1], global_skip)
    return keras.Model(inputs, _output(x, scaled, scale, global_skip), name=name)


def edsr(input_shape=(None, None, 1), scale=2, filters=64, blocks=8, upsampler="pixel_shuffle",
         global_skip=True, name="edsr"):
    """The EDSR-style teacher (see the module docstring); 64 filters x 8 blocks is ~0.6M
    parameters, small enough to train on a CPU for a recipe, far wider than the student.

    Args:
        input_shape: (height, width, channels); None sides for any size, channels 1 or 3.
        scale: 2, 3 or 4.
        filters: channels of every conv of the body.
        blocks: number of residual blocks.
        upsampler: "pixel_shuffle" (EDSR's), "transpose" or "resize".
        global_skip: add the bilinear upsampling of the input.
    """
    input_shape = _check(input_shape, scale, "edsr")
    if int(blocks) != blocks or blocks < 1 or int(filters) != filters or filters < 4:
        raise ValueError(f"edsr: `blocks` must be an integer >= 1 and `filters` >= 4, got "
                         f"blocks={blocks!r}, filters={filters!r}.")
    filters = int(filters)
    inputs = keras.Input(input_shape, name="lr")
    scaled = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    head = layers.Conv2D(filters, 3, padding="same", name="features")(scaled)
    x = head
    for i in range(int(blocks)):
        y = _conv_relu(x, filters, 3, f"block{i + 1}_a")
        y = layers.Conv2D(filters, 3, padding="same", name=f"block{i + 1}_b")(y)
        x = layers.Add(name=f"block{i + 1}")([x, y])
    x = layers.Conv2D(filters, 3, padding="same", name="body_conv")(x)
    x = layers.Add(name="body")([x, head])
    x = upsampling.upsample(x, scale, filters, method=upsampler, name="upsample")
    x = _reconstruct(x, input_shape[-1], global_skip)
    return keras.Model(inputs, _output(x, scaled, scale, global_skip), name=name)


__all__ = ["SCALES", "bilinear_kernel", "edsr", "fsrcnn"]
