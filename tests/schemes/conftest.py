"""Fixtures of the scheme tests: a small trained MNIST teacher and helpers."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest

from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="session")
def teacher(mnist_small):
    """convnet(width=16) trained 3 epochs on the 2k MNIST images (~92% test accuracy)."""
    (x, y), _ = mnist_small
    keras.utils.set_random_seed(0)
    model = convnet(width=16, name="teacher")
    model.compile(keras.optimizers.Adam(1e-2), CE, metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return model
