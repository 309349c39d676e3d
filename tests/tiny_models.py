"""Tiny functional models for tests (importable as `tests.models` or `models`)."""
import keras


def convnet(width=8, classes=10, input_shape=(28, 28, 1), name="net", seed=0):
    """Conv-BN-ReLU x2 + Flatten + Dense (learns MNIST in a few hundred steps); feature layers `block1`, `block2`, `pool`."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(width, 3, strides=2, padding="same", kernel_initializer=init,
                            use_bias=False, name="conv1")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(h)  # few steps in tests
    h = keras.layers.ReLU(name="block1")(h)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", kernel_initializer=init,
                            name="conv2")(h)
    h = keras.layers.ReLU(name="block2")(h)
    h = keras.layers.Flatten(name="pool")(h)
    outputs = keras.layers.Dense(classes, kernel_initializer=init, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)
