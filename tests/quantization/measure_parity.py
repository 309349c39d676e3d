"""Parity measurement (not a test): a MobileNet-style student on a CIFAR-10 slice.

    .venv/bin/python tests/quantization/measure_parity.py

Trains a float student briefly, rewrites it with quantize_model, fine-tunes it one epoch
quantization-aware, converts it to a fully int8 .tflite and reports LSB parity and top-1
agreement against the Keras QAT model on 500 held-out images, with the reference int8
kernels and with the default XNNPACK delegate.
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np
import keras

from conftest import assert_fully_int8, convert_int8, interpreter, run_int8
from tfkd.quantization import quantize_model

L = keras.layers
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "cifar10.npz")


def block(x, filters, stride, name):
    y = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    y = L.BatchNormalization(name=f"{name}_dw_bn")(y)
    y = L.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = L.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(y)
    y = L.BatchNormalization(name=f"{name}_pw_bn")(y)
    if stride == 1 and x.shape[-1] == filters:
        return L.Add(name=f"{name}_add")([x, y])
    return L.ReLU(6.0, name=f"{name}_pw_relu")(y)


def student():
    inputs = keras.Input((32, 32, 3), name="image")
    x = L.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    x = block(x, 16, 1, "b1")
    x = block(x, 32, 2, "b2")
    x = block(x, 32, 1, "b3")
    a = L.Conv2D(16, 1, activation="relu", name="b4_a")(x)
    b = L.Conv2D(16, 3, padding="same", activation="relu", name="b4_b")(x)
    x = L.Concatenate(name="b4_cat")([a, b])
    x = L.AveragePooling2D(2, name="b4_avg")(x)
    x = L.MaxPooling2D(1, name="b4_max")(x)
    x = block(x, 64, 1, "b5")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="mobilenetish")


def main():
    with np.load(DATA) as d:
        x, y = d["x_train"][:8000].astype("float32"), d["y_train"][:8000].astype("int32")
        xt = d["x_test"][:500].astype("float32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = student()
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    t = time.time()
    qat = quantize_model(model, calibration_data=x[:512], calibration_steps=8)
    print(f"quantize_model + calibration: {time.time() - t:.1f} s, params "
          f"{model.count_params()}")
    qat.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    content = convert_int8(qat, "/tmp")
    print("ops:", assert_fully_int8(interpreter(content)))
    ref = qat.predict(xt, verbose=0)
    for name, interp in [("reference kernels", interpreter(content)), ("XNNPACK", None)]:
        if interp is None:
            from ai_edge_litert.interpreter import Interpreter
            interp = Interpreter(model_content=content)
            interp.allocate_tensors()
        q, scale, zp = run_int8(interp, xt)
        err = np.abs(q - (ref / scale + zp))
        agree = np.mean(np.argmax(q, 1) == np.argmax(ref, 1))
        print(f"{name}: mean {err.mean():.3f} LSB, max {err.max():.0f} LSB, "
              f"top-1 agreement {agree:.3f} over {len(xt)} images")


if __name__ == "__main__":
    main()
