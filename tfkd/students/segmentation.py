"""Semantic-segmentation students: per-pixel logits at input resolution, Edge TPU-friendly.

Design
------
Both students share one MobileNetV2-style encoder (`blocks.inverted_residual`, ReLU6, linear
bottlenecks) with output stride 16 and differ in the decoder:

==========  ========  ==================================================================
feature     stride    layers (channels at width 1)
==========  ========  ==================================================================
stem        1/2       Rescaling(1/255), 3x3 Conv-BN-ReLU6 stride 2 (16)
`stage1`    1/2       inverted residual, expansion 1 (16)
`stage2`    1/4       2 inverted residuals, expansion 4 (24)
`stage3`    1/8       2 inverted residuals, expansion 4 (40)
`stage4`    1/16      3 inverted residuals, expansion 4 (72)
==========  ========  ==================================================================

`lraspp_mobile` puts the LR-ASPP head of MobileNetV3 (Howard et al., "Searching for
MobileNetV3", ICCV 2019) on it: a 1x1 Conv-BN-ReLU6 branch on `stage4`, gated by a
GlobalAveragePooling2D -> 1x1 conv -> sigmoid branch (a per-channel attention from one
global view of the image: one MEAN, a 1x1 conv, a LOGISTIC and a broadcast MUL; the paper's
large-kernel average pool is a global one at these sizes), resized bilinearly to `stage3`'s
size (`head`); a 1x1 class conv on it plus a 1x1 class conv on `stage3`.

`unet_mobile` is a light U-Net: a 1x1 Conv-BN-ReLU6 narrows `stage4`, which is resized
bilinearly to `stage3`'s size, concatenated with `stage3` and mixed by a depthwise-separable
Conv-BN-ReLU6 pair, and the same again with `stage2`, so that its class conv (`head` is its
input) works at 1/4, not 1/8: the skips bring back boundaries that a 12x15 map of a 90x120
image has lost. A U-Net rather than a DeepLab-lite (ASPP) head because ASPP earns its cost
with dilated 3x3 convs over a large map; at 6x8 (stride 16 of 90x120) a dilation of 6 or
more reads mostly padding, and the skips are what a small input lacks. Its two Concatenates
of an upsampled map with an encoder skip that also feeds the next stage are the case
`tfkd.quantization` quantizes with one shared range.

Both end in `keras.layers.Resizing(H, W, interpolation="bilinear")` named `logits`: float
logits (N, H, W, num_classes) at the input's exact size. Every resize takes its target from
the static shape of the tensor it must match, so sizes the strides do not divide work
(CamVid's 90x120 gives 45x60, 23x30, 12x15, 6x8). The input therefore needs a fixed height
and width, each at least `MIN_SIZE` (32) pixels, so that `stage4` is at least 2x2.

Why these ops: each layer lowers to an op Coral's compiler maps (CONV_2D, DEPTHWISE_CONV_2D
with BN folded in, RELU6 fused, ADD, CONCATENATION, MEAN, LOGISTIC, MUL, RESIZE_BILINEAR):
no hard-swish (MobileNetV3's own LR-ASPP uses it, and it runs on the CPU), no dilation, no
transposed conv, no nearest UpSampling2D (a 5-D RESHAPE + TILE). Every conv is followed by
its BatchNormalization and ReLU6 (or nothing, for the linear bottlenecks and class convs),
the order quantization-aware training folds and fuses.

Taps (Identity layers, for `Hint` and the dense knowledge terms): `stage1` (1/2), `stage2`
(1/4), `stage3` (1/8), `stage4` (1/16) and `head`, the features the (high-level) class conv
reads: 1/8 for `lraspp_mobile`, 1/4 for `unet_mobile`. A teacher of the same family is the
same builder at a larger `width` (3 or 4): same taps at the same resolutions, wider channels
(`Hint` and `ChannelWiseKD(student_layer=..., teacher_layer=...)` add the 1x1 adapter).

Parameters at a 90x120x3 input and 11 classes (`count_params()`, BatchNormalization
statistics included), and the cost of one training step at batch 16 (Adam, sparse
cross-entropy, no XLA) on a 2-core CPU host, TF 2.21: CPU seconds (`time.process_time()`)
/ wall seconds (the host was shared: repeated runs varied by up to a third).

=====  ==========  =============  ==========  =============
width  LR-ASPP     s/step         U-Net       s/step
=====  ==========  =============  ==========  =============
0.5        45,730  0.12 / 0.07        47,267  UNET05
1         159,662  0.19 / 0.11       164,091  0.20 / 0.12
2         592,198  0.38 / 0.22       606,443  0.43 / 0.25
3       1,297,630  0.62 / 0.34     1,327,067  0.77 / 0.43
4       2,275,958  0.91 / 0.50     2,325,963  1.11 / 0.70
=====  ==========  =============  ==========  =============

The 1x1 convs grow with width squared, the depthwise convs, BN and class convs linearly, so
width 0.5 is a bit more than a quarter of width 1, and width 2 a bit less than four times.

Example:

    >>> import numpy as np, tfkd.students
    >>> model = tfkd.students.build("lraspp_mobile", input_shape=(90, 120, 3), num_classes=11,
    ...                             width=0.5)
    >>> model.predict(np.zeros((1, 90, 120, 3), "float32"), verbose=0).shape
    (1, 90, 120, 11)
    >>> [tuple(model.get_layer(n).output.shape[1:3]) for n in ("stage1", "stage2", "stage3")]
    [(45, 60), (23, 30), (12, 15)]
"""
import keras
from keras import layers

from tfkd.students import blocks

# The encoder's output stride and the smallest side it takes (stage4 at least 2x2).
OUTPUT_STRIDE = 16
MIN_SIZE = 2 * OUTPUT_STRIDE

# (tap, channels at width 1, stride of the first block, expansion, blocks)
_STAGES = (
    ("stage1", 16, 1, 1, 1),
    ("stage2", 24, 2, 4, 2),
    ("stage3", 40, 2, 4, 2),
    ("stage4", 72, 2, 4, 3),
)
_STEM = 16
_HEAD = 64                # LR-ASPP branch / U-Net narrowing of stage4, at width 1
_DECODER = (48, 32)       # U-Net decoder channels at 1/8 and 1/4, at width 1


def check_input_shape(input_shape, name="student"):
    """Raises a ValueError naming the problem unless `input_shape` is a fixed (H, W, C) image
    with H, W >= MIN_SIZE; returns it as a tuple of ints."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"{name}: input_shape must be (height, width, channels), got {shape}.")
    if any(d is None for d in shape):
        raise ValueError(
            f"{name}: input_shape {shape} has an unknown dimension; segmentation students "
            "resize to sizes read from static shapes (and the Edge TPU needs them): give a "
            "fixed height, width and channels, e.g. (90, 120, 3).")
    h, w, _ = (int(d) for d in shape)
    if min(h, w) < MIN_SIZE:
        raise ValueError(
            f"{name}: input {h}x{w} is too small for output stride {OUTPUT_STRIDE}: each side "
            f"must be at least {MIN_SIZE} pixels (so that the 1/{OUTPUT_STRIDE} features are "
            f"at least 2x2). Resize the images to {max(h, MIN_SIZE)}x{max(w, MIN_SIZE)} or more.")
    return tuple(int(d) for d in shape)


def _size(t):
    """(height, width) of a 4-D tensor, from its static shape."""
    return int(t.shape[1]), int(t.shape[2])


def _resize_to(x, like, name):
    """Bilinear resize of `x` to the spatial size of `like` (any scale, even non-integer)."""
    h, w = like if isinstance(like, tuple) else _size(like)
    return layers.Resizing(h, w, interpolation="bilinear", name=name)(x)


def _encoder(inputs, front_end, width, momentum, name):
    x = inputs if front_end is None else front_end(inputs)
    if len(x.shape) != 4:
        raise ValueError(f"{name}: the front end must return an image (N, H, W, C) tensor, "
                         f"got shape {tuple(x.shape)}.")
    check_input_shape(x.shape[1:], name=f"{name} (encoder input)")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    x = blocks.conv_bn_relu(x, blocks.width(_STEM, width), strides=2, relu6=True, name="stem",
                            momentum=momentum)
    taps, index = {}, 0
    for tap, channels, stride, expansion, repeats in _STAGES:
        filters = blocks.width(channels, width)
        for i in range(repeats):
            index += 1
            x = blocks.inverted_residual(x, filters, stride if i == 0 else 1, expansion,
                                         f"b{index}", momentum)
        x = layers.Identity(name=tap)(x)
        taps[tap] = x
    return taps


def lraspp_mobile(input_shape=(90, 120, 3), num_classes=11, width=1.0, name="lraspp_mobile",
                  front_end=None, bn_momentum=0.99):
    """MobileNetV2-style encoder (output stride 16) with an LR-ASPP head; logits at input size.

    Returns a functional `keras.Model` from float pixels in [0, 255] of shape `input_shape`
    to (N, H, W, num_classes) logits (layer `logits`), tapping `stage1`..`stage4` and `head`
    (the gated `stage4` branch resized to 1/8, which the high-level class conv reads).
    The branch uses ReLU6 where the paper has ReLU: a bounded range keeps int8 resolution.
    """
    inputs = keras.Input(check_input_shape(input_shape, name), name="image")
    m = bn_momentum
    taps = _encoder(inputs, front_end, width, m, name)
    high, low = taps["stage4"], taps["stage3"]
    c = blocks.width(_HEAD, width)
    branch = blocks.conv_bn_relu(high, c, kernel=1, relu6=True, name="aspp", momentum=m)
    # The gate: one global view of the image re-weights every channel of the branch.
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(high)
    gate = layers.Conv2D(c, 1, name="aspp_gate_conv")(gate)
    gate = layers.Activation("sigmoid", name="aspp_gate")(gate)
    x = layers.Multiply(name="aspp_mul")([branch, gate])
    x = _resize_to(x, low, "aspp_up")
    x = layers.Identity(name="head")(x)
    high_logits = layers.Conv2D(num_classes, 1, name="classifier")(x)
    low_logits = layers.Conv2D(num_classes, 1, name="low_classifier")(low)
    x = layers.Add(name="logits_lowres")([high_logits, low_logits])
    outputs = _resize_to(x, _size(inputs), "logits")
    return keras.Model(inputs, outputs, name=name)


def unet_mobile(input_shape=(90, 120, 3), num_classes=11, width=1.0, name="unet_mobile",
                front_end=None, bn_momentum=0.99):
    """MobileNetV2-style encoder (output stride 16) with a light U-Net decoder to 1/4.

    Returns a functional `keras.Model` from float pixels in [0, 255] of shape `input_shape`
    to (N, H, W, num_classes) logits (layer `logits`), tapping `stage1`..`stage4` and `head`
    (the decoder's 1/4 features that the class conv reads).
    """
    inputs = keras.Input(check_input_shape(input_shape, name), name="image")
    m = bn_momentum
    taps = _encoder(inputs, front_end, width, m, name)
    x = blocks.conv_bn_relu(taps["stage4"], blocks.width(_HEAD, width), kernel=1, relu6=True,
                            name="reduce", momentum=m)
    for i, (skip, channels) in enumerate(zip(("stage3", "stage2"), _DECODER), start=1):
        x = _resize_to(x, taps[skip], f"up{i}")
        x = layers.Concatenate(name=f"cat{i}")([x, taps[skip]])
        x = blocks.separable_bn_relu(x, blocks.width(channels, width), name=f"dec{i}",
                                     momentum=m)
    x = layers.Identity(name="head")(x)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    outputs = _resize_to(x, _size(inputs), "logits")
    return keras.Model(inputs, outputs, name=name)
