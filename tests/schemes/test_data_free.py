"""DataFree: the student learns from the teacher on generated images only."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tfkd.schemes import DataFree
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_(df):
    df.compile(optimizer=keras.optimizers.Adam(3e-3),
               generator_optimizer=keras.optimizers.Adam(1e-3), loss=CE, metrics=["accuracy"])
    return df


def test_student_learns_without_training_images(teacher, mnist_small, tmp_path):
    _, (x_test, y_test) = mnist_small
    keras.utils.set_random_seed(0)
    student = convnet(width=8, name="student", seed=1)
    df = compile_(DataFree(teacher, student, batch_size=64, generator_width=16, bn_weight=10.0,
                           activation_weight=0.1, activation_layer="pool"))
    # No x: fit never sees an image; validation data is only watched.
    first = {}
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: first or first.update(logs))
    history = df.fit(epochs=3, steps_per_epoch=30, validation_data=(x_test, y_test),
                     callbacks=[record], verbose=0).history
    assert {"loss", "soft_targets_loss", "generator_loss", "one_hot_loss", "entropy",
            "bn_loss", "activation_loss", "val_accuracy", "val_student_loss"} <= set(history)
    # The generator's losses fall from its first batch; the student's from its first epoch.
    for key in ("generator_loss", "bn_loss", "one_hot_loss"):
        assert history[key][-1] < first[key], (key, first[key], history[key])
    assert history["soft_targets_loss"][-1] < 0.7 * history["soft_targets_loss"][0], history
    # The generated batch covers the classes (entropy of the teacher's mean prediction up).
    assert history["entropy"][-1] > 1.5, history["entropy"]
    _, teacher_acc = teacher.evaluate(x_test, y_test, verbose=0)
    student_acc = history["val_accuracy"][-1]
    assert teacher_acc > 0.85 and student_acc > 0.4, (teacher_acc, student_acc)

    images = np.asarray(df.generate(8))
    assert images.shape == (8, 28, 28, 1) and images.min() >= 0.0 and images.max() <= 1.0
    assert student.count_params() == convnet(width=8).count_params()

    df.save(tmp_path / "df.keras")
    loaded = keras.models.load_model(tmp_path / "df.keras")
    np.testing.assert_allclose(loaded.predict(x_test[:16], verbose=0),
                               df.predict(x_test[:16], verbose=0), atol=1e-6)
    z = np.random.default_rng(0).normal(size=(4, 100)).astype("float32")
    np.testing.assert_allclose(loaded.generator(z), df.generator(z), atol=1e-5)


def test_teacher_without_batchnorm_is_refused_for_bn_matching():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    plain = keras.Model(inputs, keras.layers.Dense(10)(h), name="plain_teacher")
    with pytest.raises(ValueError, match="no BatchNormalization layer.*Set bn_weight=0"):
        DataFree(plain, convnet(width=4, name="student"))
    df = DataFree(plain, convnet(width=4, name="student"), bn_weight=0.0, generator_width=8)
    assert df.bn_weight == 0.0


def test_two_optimizers_and_steps_are_required(teacher):
    df = DataFree(teacher, convnet(width=4, name="student"), generator_width=8)
    with pytest.raises(ValueError, match="two optimizers.*generator_optimizer="):
        df.compile(optimizer="adam")
    compile_(df)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        df.fit(epochs=1)
    with pytest.raises(ValueError, match="activation_layer"):
        DataFree(teacher, convnet(width=4, name="s"), activation_weight=0.1)
