"""A small zoo of Edge TPU-friendly students.

Every student is built only from ops that Coral's compiler maps to the Edge TPU and that
int8 TFLite runs everywhere: Conv2D, DepthwiseConv2D, BatchNormalization (folded at export),
ReLU / ReLU6, Add, GlobalAveragePooling2D and Dense. No hard-swish, leaky ReLU or GELU.
Each keeps the Conv-BN-ReLU order that quantization-aware training folds.

BatchNormalization uses `bn_momentum` (Keras' 0.99 by default). A short run (a few hundred
steps or fewer) needs a lower one, or its moving statistics stay near their initial values and
the student scores chance at inference: pick it with `tfkd.batch_norm.momentum_for_steps`, and
re-estimate the statistics with `tfkd.batch_norm.recompute_statistics` before export.

All students take float pixels in [0, 255] (like the reference teacher: the scaling is the
first layer, so an int8 `.tflite` can take uint8 pixels) and return logits. They tap like the
reference teacher: feature layers `stage1`, `stage2`, `stage3` (full, 1/2 and 1/4 resolution of
the stem output) and `pool`, so `Hint("stage3", "stage3")` works out of the box.

    >>> import tfkd.students
    >>> model = tfkd.students.build("mobile_cnn", input_shape=(32, 32, 3), num_classes=10)
    >>> model.count_params() <= 100_000
    True
"""
import keras
from keras import layers


def _conv_bn_relu(x, filters, kernel=3, strides=1, relu6=False, name=None, momentum=0.99):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0 if relu6 else None, name=f"{name}_relu")(x)


def _width(base, multiplier):
    return max(4, int(round(base * multiplier / 4)) * 4)


def _stem(inputs, filters, relu6=False, momentum=0.99):
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    # Large inputs (64x64 or more) are downsampled by the stem to keep the cost low.
    stride = 2 if min(inputs.shape[1], inputs.shape[2]) >= 64 else 1
    return _conv_bn_relu(x, filters, strides=stride, relu6=relu6, name="stem", momentum=momentum)


def _head(x, num_classes, name):
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return layers.Dense(num_classes, name="logits")(x)


def mobile_cnn(input_shape=(32, 32, 3), num_classes=10, width=1.0, name="mobile_cnn",
               front_end=None, bn_momentum=0.99):
    """A plain VGG-style CNN: 3 stages of 3x3 Conv-BN-ReLU (16/32/64 channels at width 1)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs if front_end is None else front_end(inputs)
    c1, c2, c3 = (_width(c, width) for c in (16, 32, 64))
    m = bn_momentum
    x = _stem(x, c1, momentum=m)
    x = layers.Identity(name="stage1")(x)
    x = _conv_bn_relu(x, c2, strides=2, name="s2a", momentum=m)
    x = _conv_bn_relu(x, c2, name="s2b", momentum=m)
    x = layers.Identity(name="stage2")(x)
    x = _conv_bn_relu(x, c3, strides=2, name="s3a", momentum=m)
    x = _conv_bn_relu(x, c3, name="s3b", momentum=m)
    x = layers.Identity(name="stage3")(x)
    return keras.Model(inputs, _head(x, num_classes, name), name=name)


def _basic_block(x, filters, strides, name, momentum):
    shortcut = x
    y = _conv_bn_relu(x, filters, strides=strides, name=f"{name}a", momentum=momentum)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}b_conv")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}b_bn")(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                 name=f"{name}_proj_conv")(shortcut)
        shortcut = layers.BatchNormalization(momentum=momentum, name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu")(y)


def resnet_tiny(input_shape=(32, 32, 3), num_classes=10, width=1.0, name="resnet_tiny",
                front_end=None, bn_momentum=0.99):
    """A ResNet-8: stem + one basic block per stage (16/32/64 channels at width 1)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs if front_end is None else front_end(inputs)
    c1, c2, c3 = (_width(c, width) for c in (16, 32, 64))
    x = _stem(x, c1, momentum=bn_momentum)
    x = _basic_block(x, c1, 1, "b1", bn_momentum)
    x = layers.Identity(name="stage1")(x)
    x = _basic_block(x, c2, 2, "b2", bn_momentum)
    x = layers.Identity(name="stage2")(x)
    x = _basic_block(x, c3, 2, "b3", bn_momentum)
    x = layers.Identity(name="stage3")(x)
    return keras.Model(inputs, _head(x, num_classes, name), name=name)


def _inverted_residual(x, filters, strides, expansion, name, momentum):
    """MobileNetV2 block: 1x1 expand - 3x3 depthwise - 1x1 project (linear), Add when it fits."""
    in_c = x.shape[-1]
    y = x
    if expansion != 1:
        y = _conv_bn_relu(y, in_c * expansion, kernel=1, relu6=True, name=f"{name}_expand",
                          momentum=momentum)
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                               name=f"{name}_dw")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(max_value=6.0, name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_project_bn")(y)
    if strides == 1 and in_c == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenet_tiny(input_shape=(32, 32, 3), num_classes=10, width=1.0, name="mobilenet_tiny",
                   front_end=None, bn_momentum=0.99):
    """A MobileNetV2-style net (inverted residuals, ReLU6): 16/24/40/80 channels at width 1."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs if front_end is None else front_end(inputs)
    c0, c1, c2, c3 = (_width(c, width) for c in (16, 24, 40, 80))
    m = bn_momentum
    x = _stem(x, c0, relu6=True, momentum=m)
    x = _inverted_residual(x, c1, 1, 1, "b1", m)
    x = _inverted_residual(x, c1, 1, 3, "b2", m)
    x = layers.Identity(name="stage1")(x)
    x = _inverted_residual(x, c2, 2, 3, "b3", m)
    x = _inverted_residual(x, c2, 1, 3, "b4", m)
    x = layers.Identity(name="stage2")(x)
    x = _inverted_residual(x, c3, 2, 3, "b5", m)
    x = _inverted_residual(x, c3, 1, 3, "b6", m)
    x = layers.Identity(name="stage3")(x)
    return keras.Model(inputs, _head(x, num_classes, name), name=name)


STUDENTS = {
    "mobile_cnn": mobile_cnn,
    "resnet_tiny": resnet_tiny,
    "mobilenet_tiny": mobilenet_tiny,
}


def names():
    return sorted(STUDENTS)


def build(name, input_shape=(32, 32, 3), num_classes=10, width=1.0, front_end=None,
          bn_momentum=0.99):
    """Builds the student `name` of the zoo; `width` multiplies every layer's channels.

    `front_end`, a function of the input tensor, inserts layers before the stem in the same
    flat functional graph (e.g. a learned upsampling front end for low-resolution inputs).
    `bn_momentum` is the momentum of every BatchNormalization layer. Keras' 0.99 suits runs
    of a few hundred steps or more; for shorter ones use
    `tfkd.batch_norm.momentum_for_steps(planned_steps)`.
    """
    if name not in STUDENTS:
        raise ValueError(f"Unknown student {name!r}. The zoo has: {', '.join(names())}.")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}.")
    if not 0.0 <= bn_momentum < 1.0:
        raise ValueError(
            f"bn_momentum must be in [0, 1), got {bn_momentum}. It is the weight of the old "
            "value in each moving-average update (Keras' default 0.99); see "
            "tfkd.batch_norm.momentum_for_steps.")
    return STUDENTS[name](input_shape=tuple(input_shape), num_classes=int(num_classes),
                          width=float(width), front_end=front_end,
                          bn_momentum=float(bn_momentum))
