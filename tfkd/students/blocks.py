"""Building blocks of the student zoo: Conv-BN-ReLU, the stem, residual and inverted-residual
blocks. Every block keeps the Conv-BN-ReLU order that quantization-aware training folds, and
uses only ops Coral's compiler maps to the Edge TPU."""
from keras import layers


def conv_bn_relu(x, filters, kernel=3, strides=1, relu6=False, name=None, momentum=0.99):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0 if relu6 else None, name=f"{name}_relu")(x)


def width(base, multiplier):
    return max(4, int(round(base * multiplier / 4)) * 4)


def stem(inputs, filters, relu6=False, momentum=0.99):
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    # Large inputs (64x64 or more) are downsampled by the stem to keep the cost low.
    stride = 2 if min(inputs.shape[1], inputs.shape[2]) >= 64 else 1
    return conv_bn_relu(x, filters, strides=stride, relu6=relu6, name="stem", momentum=momentum)


def classifier_head(x, num_classes, name):
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return layers.Dense(num_classes, name="logits")(x)


def basic_block(x, filters, strides, name, momentum):
    shortcut = x
    y = conv_bn_relu(x, filters, strides=strides, name=f"{name}a", momentum=momentum)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}b_conv")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}b_bn")(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                 name=f"{name}_proj_conv")(shortcut)
        shortcut = layers.BatchNormalization(momentum=momentum, name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu")(y)


def inverted_residual(x, filters, strides, expansion, name, momentum):
    """MobileNetV2 block: 1x1 expand - 3x3 depthwise - 1x1 project (linear), Add when it fits."""
    in_c = x.shape[-1]
    y = x
    if expansion != 1:
        y = conv_bn_relu(y, in_c * expansion, kernel=1, relu6=True, name=f"{name}_expand",
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


def separable_bn_relu(x, filters, name, momentum=0.99, relu6=True):
    """Depthwise 3x3-BN-ReLU6 then pointwise 1x1-BN-ReLU6: a 3x3 conv's reach at ~1/8 the cost.

    Kept as two Conv-BN-ReLU pairs (not a SeparableConv2D layer) because that is what TFLite
    runs anyway and each pair folds and fuses in quantization-aware training.
    """
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(max_value=6.0 if relu6 else None, name=f"{name}_dw_relu")(x)
    return conv_bn_relu(x, filters, kernel=1, relu6=relu6, name=f"{name}_pw", momentum=momentum)
