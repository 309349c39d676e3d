"""MutualLearning: two students teach each other on real MNIST."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import tfkd
from tfkd.schemes import MutualLearning
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def plain_keras(model):
    """True when every layer is a stock Keras layer: the model loads without tfkd."""
    return all(type(layer).__module__.startswith("keras.")
               for layer in model._flatten_layers(include_self=True))


def make(ensemble=False, n=2):
    keras.utils.set_random_seed(0)
    students = [convnet(width=4, name=f"s{i}", seed=i) for i in range(n)]
    ml = MutualLearning(students, temperature=2.0, ensemble=ensemble)
    ml.compile(keras.optimizers.Adam(1e-2), CE, metrics=["accuracy"])
    return ml, students


def test_two_students_learn_from_labels_and_each_other(mnist_small, tmp_path):
    (x, y), (x_test, y_test) = mnist_small
    ml, (a, b) = make()
    history = ml.fit(x, y, epochs=3, batch_size=64, verbose=0).history
    assert set(history) == {"loss", "s0_loss", "s1_loss", "s0_kd_loss", "s1_kd_loss",
                            "s0_accuracy", "s1_accuracy"}
    for name in ("s0", "s1"):
        assert history[f"{name}_loss"][-1] < 0.6 * history[f"{name}_loss"][0], history
    assert all(v > 0 for v in history["s0_kd_loss"])
    logs = ml.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert logs["s0_accuracy"] > 0.6 and logs["s1_accuracy"] > 0.6, logs
    # The total is the sum of both students' task and (weight 1) mutual losses.
    parts = sum(logs[k] for k in ("s0_loss", "s1_loss", "s0_kd_loss", "s1_kd_loss"))
    assert logs["loss"] == pytest.approx(parts, rel=1e-4)

    # Each student is a plain Keras model on its own, exportable and reloadable alone.
    student = ml.get_student("s1")
    assert student is b and ml.get_student(0) is a and plain_keras(student)
    assert student.count_params() == convnet(width=4).count_params()
    student.save(tmp_path / "s1.keras")
    reloaded = keras.models.load_model(tmp_path / "s1.keras")
    np.testing.assert_allclose(reloaded.predict(x_test[:16], verbose=0),
                               b.predict(x_test[:16], verbose=0), atol=1e-6)

    # The whole scheme round trips too (config, weights, optimizer state).
    ml.save(tmp_path / "ml.keras")
    loaded = keras.models.load_model(tmp_path / "ml.keras")
    assert isinstance(loaded, MutualLearning) and loaded.temperature == 2.0
    got = loaded.predict(x_test[:16], verbose=0)
    want = ml.predict(x_test[:16], verbose=0)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)
    assert int(loaded.optimizer.iterations) == int(ml.optimizer.iterations)
    loaded.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)


def test_ensemble_of_peers_with_three_students(mnist_small):
    (x, y), _ = mnist_small
    ml, students = make(ensemble=True, n=3)
    history = ml.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert {f"s{i}_kd_loss" for i in range(3)} <= set(history)
    assert tfkd.schemes.MutualLearning is MutualLearning


def test_peer_targets_are_the_mean_of_the_peers_distributions():
    ml, _ = make(ensemble=True, n=3)
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(4, 10)).astype("float32") for _ in range(3)]
    (view,) = ml._peer_view(logits, 0)
    t = ml.temperature
    soft = lambda z: np.exp(z / t) / np.exp(z / t).sum(-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(soft(np.asarray(view.outputs)),
                               (soft(logits[1]) + soft(logits[2])) / 2, atol=1e-5)


def test_one_student_is_refused():
    with pytest.raises(ValueError, match="two or more students.*got 1"):
        MutualLearning([convnet(width=4, name="only")])
    with pytest.raises(ValueError, match="two or more students"):
        MutualLearning(convnet(width=4, name="only"))


def test_students_must_agree_on_classes_and_names():
    with pytest.raises(ValueError, match="different numbers of classes"):
        MutualLearning([convnet(4, name="a"), convnet(4, classes=5, name="b")])
    with pytest.raises(ValueError, match="names must be distinct"):
        MutualLearning([convnet(4, name="a"), convnet(4, name="a")])
