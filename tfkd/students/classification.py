"""Classification students: logits from GlobalAveragePooling2D + Dense.

They tap like the reference teacher: feature layers `stage1`, `stage2`, `stage3` (full, 1/2 and
1/4 resolution of the stem output) and `pool`, so `Hint("stage3", "stage3")` works out of the
box.
"""
import keras
from keras import layers

from tfkd.students import blocks


def mobile_cnn(input_shape=(32, 32, 3), num_classes=10, width=1.0, name="mobile_cnn",
               front_end=None, bn_momentum=0.99):
    """A plain VGG-style CNN: 3 stages of 3x3 Conv-BN-ReLU (16/32/64 channels at width 1)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs if front_end is None else front_end(inputs)
    c1, c2, c3 = (blocks.width(c, width) for c in (16, 32, 64))
    m = bn_momentum
    x = blocks.stem(x, c1, momentum=m)
    x = layers.Identity(name="stage1")(x)
    x = blocks.conv_bn_relu(x, c2, strides=2, name="s2a", momentum=m)
    x = blocks.conv_bn_relu(x, c2, name="s2b", momentum=m)
    x = layers.Identity(name="stage2")(x)
    x = blocks.conv_bn_relu(x, c3, strides=2, name="s3a", momentum=m)
    x = blocks.conv_bn_relu(x, c3, name="s3b", momentum=m)
    x = layers.Identity(name="stage3")(x)
    return keras.Model(inputs, blocks.classifier_head(x, num_classes, name), name=name)


def resnet_tiny(input_shape=(32, 32, 3), num_classes=10, width=1.0, name="resnet_tiny",
                front_end=None, bn_momentum=0.99):
    """A ResNet-8: stem + one basic block per stage (16/32/64 channels at width 1)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs if front_end is None else front_end(inputs)
    c1, c2, c3 = (blocks.width(c, width) for c in (16, 32, 64))
    x = blocks.stem(x, c1, momentum=bn_momentum)
    x = blocks.basic_block(x, c1, 1, "b1", bn_momentum)
    x = layers.Identity(name="stage1")(x)
    x = blocks.basic_block(x, c2, 2, "b2", bn_momentum)
    x = layers.Identity(name="stage2")(x)
    x = blocks.basic_block(x, c3, 2, "b3", bn_momentum)
    x = layers.Identity(name="stage3")(x)
    return keras.Model(inputs, blocks.classifier_head(x, num_classes, name), name=name)


def mobilenet_tiny(input_shape=(32, 32, 3), num_classes=10, width=1.0, name="mobilenet_tiny",
                   front_end=None, bn_momentum=0.99):
    """A MobileNetV2-style net (inverted residuals, ReLU6): 16/24/40/80 channels at width 1."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs if front_end is None else front_end(inputs)
    c0, c1, c2, c3 = (blocks.width(c, width) for c in (16, 24, 40, 80))
    m = bn_momentum
    x = blocks.stem(x, c0, relu6=True, momentum=m)
    x = blocks.inverted_residual(x, c1, 1, 1, "b1", m)
    x = blocks.inverted_residual(x, c1, 1, 3, "b2", m)
    x = layers.Identity(name="stage1")(x)
    x = blocks.inverted_residual(x, c2, 2, 3, "b3", m)
    x = blocks.inverted_residual(x, c2, 1, 3, "b4", m)
    x = layers.Identity(name="stage2")(x)
    x = blocks.inverted_residual(x, c3, 2, 3, "b5", m)
    x = blocks.inverted_residual(x, c3, 1, 3, "b6", m)
    x = layers.Identity(name="stage3")(x)
    return keras.Model(inputs, blocks.classifier_head(x, num_classes, name), name=name)
