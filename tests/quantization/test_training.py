"""QAT trains: ranges move in training and stay put in inference, callbacks flip modes
mid-fit, and a GradientTape train_step under fit lowers the loss on MNIST (XLA on and off)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
import keras

from tfkd.quantization import (FreezeQuantizationRanges, StartQuantization, quantize_model,
                               quantized_layers)

L = keras.layers
MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "mnist.npz")


@pytest.fixture(scope="module")
def mnist():
    if not os.path.exists(MNIST):
        pytest.skip(f"MNIST not found at {MNIST}")
    with np.load(MNIST) as data:
        x, y = data["x_train"][:2048], data["y_train"][:2048]
    return x[..., None].astype("float32"), y.astype("int32")


def tiny_net():
    inputs = keras.Input((28, 28, 1), name="image")
    x = L.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(momentum=0.9, name="dw_bn")(x)
    x = L.ReLU(6.0, name="dw_relu")(x)
    x = L.Conv2D(16, 1, strides=2, use_bias=False, name="pw")(x)
    x = L.BatchNormalization(momentum=0.9, name="pw_bn")(x)
    x = L.ReLU(name="pw_relu")(x)
    x = L.Flatten(name="flatten")(x)
    outputs = L.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny")


class TapeTrainer(keras.Model):
    """A subclassed model with its own GradientTape train_step, the shape of tfkd.Distiller."""

    def __init__(self, student):
        super().__init__()
        self.student = student
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, x, training=False):
        return self.student(x, training=training)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.loss_fn(y, self.student(x, training=True))
        variables = self.student.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]


def _ranges(model):
    return {l.name: (float(l.range_min), float(l.range_max))
            for l in quantized_layers(model) if hasattr(l, "range_min")}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_tape_train_step_under_fit_lowers_loss_on_mnist(mnist, jit_compile):
    x, y = mnist
    float_model = tiny_net()
    float_model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    float_model.fit(x[:1024], y[:1024], epochs=1, batch_size=64, verbose=0)

    qat = quantize_model(float_model, calibration_data=x[:256], calibration_steps=4)
    trainer = TapeTrainer(qat)
    trainer.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=jit_compile)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    before = float(loss_fn(y, qat.predict(x, verbose=0)))
    ranges_before = _ranges(qat)
    history = trainer.fit(x, y, epochs=2, batch_size=64, verbose=0)
    after = float(loss_fn(y, qat.predict(x, verbose=0)))
    assert after < 0.9 * before, (before, after, history.history)
    ranges_after = _ranges(qat)
    moved = [n for n in ranges_before if ranges_before[n] != ranges_after[n]]
    # Pixel ranges (0..255, 0..1) are data-bound; every learned activation's range moves.
    assert set(moved) == {"stem_relu", "dw_relu", "pw_relu", "logits"}, (ranges_before,
                                                                          ranges_after)
    # Inference leaves ranges alone.
    qat.predict(x[:256], verbose=0)
    qat(x[:64], training=False)
    assert _ranges(qat) == ranges_after


def test_callbacks_freeze_ranges_and_start_quantization(mnist):
    x, y = mnist
    x, y = x[:512], y[:512]
    qat = quantize_model(tiny_net(), calibration_data=x[:128], calibration_steps=2)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            layer = qat.get_layer("stem_relu")
            seen.append((float(layer.quant_enabled), float(layer.range_frozen), _ranges(qat)))

    qat.fit(x, y, epochs=3, batch_size=64, verbose=0,
            callbacks=[StartQuantization(epoch=1), FreezeQuantizationRanges(epoch=2), Record()])
    assert [s[:2] for s in seen] == [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)]
    assert seen[0][2] != seen[1][2]  # ranges track while fake-quant is still off
    assert seen[1][2] == seen[2][2]  # and stop once frozen, though the weights still train
    with pytest.raises(ValueError, match="non-negative"):
        FreezeQuantizationRanges(epoch=-1)


def test_trained_mnist_qat_converts_to_int8_with_parity(mnist, int8_tools, tmp_path):
    x, y = mnist
    float_model = tiny_net()
    float_model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    float_model.fit(x[:1536], y[:1536], epochs=1, batch_size=64, verbose=0)
    qat = quantize_model(float_model, calibration_data=x[:256], calibration_steps=4)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    qat.fit(x[:1536], y[:1536], epochs=1, batch_size=64, verbose=0)
    content = int8_tools["convert"](qat, tmp_path)
    int8_tools["fully_int8"](int8_tools["interpreter"](content))
    mean, worst, agree = int8_tools["parity"](qat, content, x[1536:2048])
    print(f"mnist tiny net: mean {mean:.3f} LSB, max {worst:.0f}, top-1 agreement {agree:.3f}")
    assert mean < 0.25 and agree >= 0.98, (mean, worst, agree)


_MIRRORED = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tfkd.quantization import quantize_model, quantized_layers
L = keras.layers
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 12, 12, 3)).astype("float32")
y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((12, 12, 3))
    h = L.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, L.Dense(2, name="logits")(h))
    qat = quantize_model(model, calibration_data=x[:64], calibration_steps=2)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = float(keras.ops.convert_to_numpy(qat.get_layer("relu").range_max))
hist = qat.fit(x, y, epochs=2, batch_size=32, verbose=0).history["loss"]
after = float(keras.ops.convert_to_numpy(qat.get_layer("relu").range_max))
assert strategy.num_replicas_in_sync == 2
assert np.all(np.isfinite(hist)) and hist[-1] < hist[0], hist
assert np.isfinite(after) and after != before, (before, after)
print("MIRRORED_OK", hist, before, after)
"""


def test_trains_under_mirrored_strategy(tmp_path):
    # Logical devices must be configured before TensorFlow initializes: a fresh process.
    import subprocess
    import sys

    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED)
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(root)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0 and "MIRRORED_OK" in result.stdout, (
        result.stdout[-2000:] + result.stderr[-4000:])
