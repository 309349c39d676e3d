"""tfkd.batch_norm: the momentum for a step count, the staleness check, and re-estimation."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tfkd import batch_norm
from tfkd import students


def test_momentum_for_steps():
    # 0.01 ** (1 / 50) = 0.9120: after the 50 steps the initial statistics weigh 1%.
    assert batch_norm.momentum_for_steps(50) == pytest.approx(0.01 ** (1 / 50))
    assert batch_norm.momentum_for_steps(50) ** 50 == pytest.approx(0.01)
    assert batch_norm.momentum_for_steps(100_000) == 0.99  # Keras' default for long runs
    assert batch_norm.momentum_for_steps(3) == 0.9  # very short runs: the floor
    with pytest.raises(ValueError, match="steps must be >= 1"):
        batch_norm.momentum_for_steps(0)


def test_stale_fraction_of_the_zoo_default_on_a_short_run():
    model = students.build("mobile_cnn", num_classes=3)
    # 280 images, batch 64, 10 epochs: 50 steps at Keras' 0.99 leave 60% of the initial values.
    assert batch_norm.stale_fraction(model, 50) == pytest.approx(0.99 ** 50)
    quick = students.build("mobile_cnn", num_classes=3,
                           bn_momentum=batch_norm.momentum_for_steps(50))
    assert batch_norm.stale_fraction(quick, 50) == pytest.approx(0.01)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert batch_norm.stale_fraction(plain, 50) == 0.0


def _bn_model():
    """Input -> [nested model: Dense(identity) -> BN (frozen)] -> BN; the statistics of the
    inner BN are those of the data, known in closed form."""
    inner_in = keras.Input((3,))
    dense = keras.layers.Dense(3, use_bias=False, kernel_initializer="identity", name="id")
    inner = keras.Model(inner_in, keras.layers.BatchNormalization(name="bn_in")(
        dense(inner_in)), name="inner")
    inner.get_layer("bn_in").trainable = False
    x = keras.Input((3,))
    out = keras.layers.BatchNormalization(momentum=0.7, name="bn_out")(inner(x))
    return keras.Model(x, out)


def test_recompute_statistics_is_the_average_of_the_batch_statistics():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(256, 3)) * [1.0, 2.0, 0.5] + [5.0, -3.0, 0.0]).astype("float32")
    model = _bn_model()
    kernel_before = model.get_layer("inner").get_layer("id").get_weights()[0].copy()
    seen = batch_norm.recompute_statistics(model, x, batch_size=64)
    assert seen == 256
    batches = x.reshape(4, 64, 3)
    bn_in = model.get_layer("inner").get_layer("bn_in")
    np.testing.assert_allclose(bn_in.moving_mean.numpy(), batches.mean(1).mean(0), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(bn_in.moving_variance.numpy(), batches.var(1).mean(0),
                               rtol=1e-4)
    # The outer BN sees the inner BN's training-mode outputs: about mean 0, variance 1.
    bn_out = model.get_layer("bn_out")
    np.testing.assert_allclose(bn_out.moving_mean.numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(bn_out.moving_variance.numpy(), 1.0, atol=1e-2)
    # Weights, momentum and the frozen flag are as they were.
    np.testing.assert_array_equal(
        model.get_layer("inner").get_layer("id").get_weights()[0], kernel_before)
    assert bn_in.trainable is False and bn_out.momentum == 0.7 and bn_in.momentum == 0.99


def test_recompute_statistics_takes_datasets_and_a_batch_limit():
    import tensorflow as tf

    x = np.arange(60 * 3, dtype="float32").reshape(60, 3)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(60))).batch(20)
    model = _bn_model()
    assert batch_norm.recompute_statistics(model, ds, max_batches=2) == 40
    bn_in = model.get_layer("inner").get_layer("bn_in")
    np.testing.assert_allclose(bn_in.moving_mean.numpy(), x[:40].mean(0), rtol=1e-5)
    with pytest.raises(ValueError, match="no batch"):
        batch_norm.recompute_statistics(model, x[:0])


def test_recompute_statistics_does_not_run_a_model_without_batch_norm():
    class Counting(keras.layers.Layer):
        calls = 0

        def call(self, x):
            type(self).calls += 1
            return x

    model = keras.Sequential([keras.Input((2,)), Counting()])
    calls = Counting.calls
    assert batch_norm.recompute_statistics(model, np.ones((8, 2), "float32")) == 0
    assert Counting.calls == calls  # no batch was run


def test_recompute_statistics_rescues_a_short_run(mnist_small):
    """The failure it fixes, on real MNIST: 24 steps at Keras' momentum 0.99 leave the moving
    statistics near their initial values, and the model scores far below its training-mode
    accuracy in inference mode until they are re-estimated."""
    (x_train, y_train), (x_test, y_test) = mnist_small
    keras.utils.set_random_seed(0)
    model = students.build("mobile_cnn", input_shape=(28, 28, 1), num_classes=10, width=0.5)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    pixels = x_train[:1536] * 255.0  # the zoo takes [0, 255] pixels
    model.fit(pixels, y_train[:1536], batch_size=64, epochs=1, verbose=0)
    assert batch_norm.stale_fraction(model, 24) > 0.75

    def accuracy():
        logits = model.predict(x_test * 255.0, batch_size=256, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == y_test))

    before = accuracy()
    batch_norm.recompute_statistics(model, pixels, max_batches=16)
    after = accuracy()
    # What the weights can do: training mode, each test batch normalised by its own statistics
    # (measured last, since a training-mode call moves the moving averages).
    batch_stats = np.concatenate([np.argmax(model(x_test[i:i + 64] * 255.0, training=True), -1)
                                  for i in range(0, len(x_test), 64)])
    training_mode = float(np.mean(batch_stats == y_test))
    assert after >= before + 0.25, (before, after)
    assert after >= training_mode - 0.05, (before, after, training_mode)
