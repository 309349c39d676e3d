"""Shared fixtures: the local data sets and tiny models sized for a 2-core CI machine."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from shared_paths import SHARED_DATA


@pytest.fixture(scope="session")
def mnist_small():
    """2,048 train and 512 test images of the real MNIST, scaled to [0, 1], shape (28, 28, 1)."""
    path = SHARED_DATA / "mnist.npz"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared/data beside the repo.")
    with np.load(path) as data:
        x_train = data["x_train"][:2048].astype("float32")[..., None] / 255.0
        y_train = data["y_train"][:2048].astype("int32")
        x_test = data["x_test"][:512].astype("float32")[..., None] / 255.0
        y_test = data["y_test"][:512].astype("int32")
    return (x_train, y_train), (x_test, y_test)
