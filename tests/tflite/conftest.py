"""Shared tiny models and converted files for the tfkd.tflite tests.

Models are tiny (14x14 MNIST, a few filters) and built once per session: tracing and
converting dominate the run time, not the math.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def mnist():
    """MNIST test images downsampled to 14x14x1 in [0, 1]: 2000 to train, 300 to test."""
    path = DATA_DIR / "mnist.npz"
    if not path.exists():
        pytest.skip(f"{path} not found (CI lays ../shared/data beside the repo)")
    with np.load(path) as d:
        x, y = d["x_test"], d["y_test"]
    x = (x[:, ::2, ::2, None] / 255.0).astype("float32")
    y = y.astype("int64")
    return (x[:2000], y[:2000]), (x[2000:2300], y[2000:2300])


def edge_net(activation="relu6", name="edge_net"):
    """Conv / depthwise / act / residual add / avgpool / GAP / dense: Edge TPU friendly with
    relu6; `activation` swaps the middle activation for a failing variant."""
    import keras

    def act(x, label):
        if activation == "relu6":
            return keras.layers.ReLU(6.0, name=label)(x)
        if activation == "leaky_relu":
            return keras.layers.LeakyReLU(0.1, name=label)(x)
        if activation == "hard_swish":
            return keras.layers.Activation("hard_swish", name=label)(x)
        raise ValueError(activation)

    inp = keras.Input((14, 14, 1), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="stem")(inp)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = act(y, "dw_act")
    y = keras.layers.Conv2D(16, 1, name="pw")(y)
    x = keras.layers.Add(name="residual")([x, y])
    x = keras.layers.AveragePooling2D(2, name="avgpool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name=name)


@pytest.fixture(scope="session")
def trained_net(mnist):
    """The Edge TPU-friendly net, trained briefly so its predictions mean something."""
    import keras

    keras.utils.set_random_seed(0)
    (x, y), _ = mnist
    model = edge_net()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    return model


@pytest.fixture(scope="session")
def files(tmp_path_factory, trained_net, mnist):
    """float32 and int8 (int8 I/O) conversions of `trained_net`, shared by several tests."""
    import tfkd.tflite as tfl

    (x, _), _ = mnist
    folder = tmp_path_factory.mktemp("converted")
    out = {"dir": folder}
    out["float32"] = folder / "net_f32.tflite"
    out["float32_report"] = tfl.convert(trained_net, out["float32"])
    out["int8"] = folder / "net_int8.tflite"
    out["int8_report"] = tfl.convert(trained_net, out["int8"], quantization="int8",
                                     representative_data=x[:200], input_type="int8",
                                     num_calibration_steps=200)
    return out


class FakeQuant:
    """Builders of a tiny quantization-aware model made of fake-quant ops, standing in for
    tfkd.quantization's output (conv + relu fused, per-channel weights, input/output ranges)."""

    @staticmethod
    def build(with_output_range=True, seed=0):
        import keras
        import tensorflow as tf

        class ActQuant(keras.layers.Layer):
            def __init__(self, lo, hi, **kw):
                super().__init__(**kw)
                self.lo, self.hi = lo, hi

            def call(self, x):
                return keras.quantizers.fake_quant_with_min_max_vars(
                    x, self.lo, self.hi, num_bits=8, narrow_range=False)

        class QConvReLU(keras.layers.Layer):
            """Conv + ReLU with per-channel symmetric weights and a fixed output range."""

            def __init__(self, filters, out_max, **kw):
                super().__init__(**kw)
                self.filters, self.out_max = filters, out_max

            def build(self, shape):
                self.kernel = self.add_weight(shape=(3, 3, shape[-1], self.filters),
                                              initializer="glorot_uniform", name="kernel")
                self.bias = self.add_weight(shape=(self.filters,), initializer="zeros",
                                            name="bias")

            def call(self, x):
                r = tf.reduce_max(tf.abs(self.kernel), axis=[0, 1, 2])
                k = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                    self.kernel, -r, r, num_bits=8, narrow_range=True)
                y = tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME") + self.bias)
                return tf.quantization.fake_quant_with_min_max_vars(y, 0.0, self.out_max)

        class QDense(keras.layers.Layer):
            """Dense with per-tensor symmetric weights (per-channel Dense crashes the
            converter)."""

            def __init__(self, units, **kw):
                super().__init__(**kw)
                self.units = units

            def build(self, shape):
                self.kernel = self.add_weight(shape=(shape[-1], self.units),
                                              initializer="glorot_uniform", name="kernel")
                self.bias = self.add_weight(shape=(self.units,), initializer="zeros",
                                            name="bias")

            def call(self, x):
                r = tf.reduce_max(tf.abs(self.kernel))
                k = tf.quantization.fake_quant_with_min_max_vars(
                    self.kernel, -r, r, num_bits=8, narrow_range=True)
                return tf.matmul(x, k) + self.bias

        keras.utils.set_random_seed(seed)
        inp = keras.Input((8, 8, 3), name="image")
        x = ActQuant(0.0, 1.0, name="input_quant")(inp)
        x = QConvReLU(4, 2.0, name="conv1")(x)
        x = keras.layers.Flatten(name="flat")(x)
        x = QDense(5, name="logits")(x)
        if with_output_range:
            x = ActQuant(-4.0, 4.0, name="logits_quant")(x)
        return keras.Model(inp, x, name="qat_net")


@pytest.fixture(scope="session")
def fake_quant():
    return FakeQuant


@pytest.fixture(scope="session")
def build_edge_net():
    return edge_net


@pytest.fixture(scope="session")
def pixel_int8(tmp_path_factory, trained_net, mnist):
    """(path, model): `trained_net` behind Rescaling(1/255), so that it takes 0..255 pixels,
    converted with int8 input; what a student trained on `tfkd.data`'s uint8 images is."""
    import keras

    import tfkd.tflite as tfl

    (x, _), _ = mnist
    model = keras.Sequential([keras.Input((14, 14, 1), name="pixels"),
                              keras.layers.Rescaling(1 / 255, name="scale"), trained_net],
                             name="pixel_net")
    path = tmp_path_factory.mktemp("pixels") / "pixel_int8.tflite"
    tfl.convert(model, path, quantization="int8", representative_data=np.round(x[:200] * 255),
                input_type="int8", num_calibration_steps=200)
    return path, model


# Dense labels made from MNIST, shaped like CamVid's: 11 classes (0 background, 1 + digit on
# the stroke) and a void id 11 == num_classes on the blurred rim between stroke and background.
SEG_CLASSES, SEG_VOID = 11, 11


def seg_labels(x, y):
    """(N, 14, 14) uint8 class ids for MNIST images x (N, 14, 14, 1) in [0, 1] and digits y."""
    img = x[..., 0]
    labels = np.full(img.shape, SEG_VOID, np.uint8)
    labels[img < 0.1] = 0
    stroke = img > 0.5
    labels[stroke] = (1 + y[:, None, None] * np.ones_like(img, dtype=np.int64))[stroke]
    return labels


def seg_net():
    """A tiny encoder-decoder: stride-2 conv, global context, 2x bilinear upsampling, a skip."""
    import keras

    inp = keras.Input((14, 14, 1), name="image")
    skip = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="enc1")(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu",
                            name="down")(skip)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="mid1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="mid2")(x)
    context = keras.layers.GlobalAveragePooling2D(keepdims=True, name="context")(x)
    context = keras.layers.Conv2D(32, 1, activation="relu", name="context_proj")(context)
    x = keras.layers.Add(name="with_context")([x, context])
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")(x)
    x = keras.layers.Concatenate(name="skip")([x, skip])
    out = keras.layers.Conv2D(SEG_CLASSES, 1, name="logits")(x)
    return keras.Model(inp, out, name="seg_net")


@pytest.fixture(scope="session")
def mnist_seg(mnist):
    (x, y), (xt, yt) = mnist
    return (x, seg_labels(x, y)), (xt, seg_labels(xt, yt))


@pytest.fixture(scope="session")
def trained_seg(mnist_seg, tmp_path_factory):
    """(model, int8 path): `seg_net` trained briefly (void pixels weighted 0), converted with
    int8 I/O."""
    import keras

    import tfkd.tflite as tfl

    keras.utils.set_random_seed(0)
    (x, labels), _ = mnist_seg
    weights = (labels != SEG_VOID).astype("float32")
    model = seg_net()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.minimum(labels, SEG_CLASSES - 1), sample_weight=weights, batch_size=64,
              epochs=4, verbose=0)
    path = tmp_path_factory.mktemp("seg") / "seg_int8.tflite"
    tfl.convert(model, path, quantization="int8", representative_data=x[:100],
                input_type="int8", num_calibration_steps=100)
    return model, path
