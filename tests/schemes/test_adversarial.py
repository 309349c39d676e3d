"""AdversarialDistillation: the student learns soft targets and to fool a discriminator."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tfkd.schemes import AdversarialDistillation
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_(adv):
    adv.compile(optimizer=keras.optimizers.Adam(1e-2), loss=CE, metrics=["accuracy"],
                discriminator_optimizer=keras.optimizers.Adam(1e-3))
    return adv


@pytest.mark.parametrize("features", [None, ("block2", "block2")])
def test_student_learns_and_discriminator_trains(teacher, mnist_small, features, tmp_path):
    (x, y), (x_test, y_test) = mnist_small
    keras.utils.set_random_seed(0)
    student = convnet(width=4, name="student", seed=1)
    adv = compile_(AdversarialDistillation(student, teacher, features=features))
    d_before = [w.numpy().copy() for w in adv.discriminator.weights]
    history = adv.fit(x[:1024], y[:1024], epochs=3, batch_size=64, verbose=0).history
    assert set(history) == {"loss", "student_loss", "soft_targets_loss", "adversarial_loss",
                            "discriminator_loss", "discriminator_accuracy", "accuracy"}
    for key in ("loss", "student_loss", "soft_targets_loss"):
        assert history[key][-1] < 0.8 * history[key][0], (key, history[key])
    assert all(np.isfinite(history["discriminator_loss"] + history["adversarial_loss"]))
    # Both optimizers stepped: the discriminator's weights moved, one step per batch each.
    assert any(np.abs(a - b.numpy()).max() > 0 for a, b in zip(d_before, adv.discriminator.weights))
    assert int(adv.optimizer.iterations) == int(adv.discriminator_optimizer.iterations) == 48
    logs = adv.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert logs["accuracy"] > 0.5, logs
    # The student is exported alone: no discriminator, no adapter.
    assert student.count_params() == convnet(width=4).count_params()
    assert not any("discriminator" in w.path for w in student.weights)

    if features is None:
        adv.save(tmp_path / "adv.keras")
        loaded = keras.models.load_model(tmp_path / "adv.keras")
        np.testing.assert_allclose(loaded.predict(x_test[:16], verbose=0),
                                   adv.predict(x_test[:16], verbose=0), atol=1e-6)
        for a, b in zip(loaded.discriminator.weights, adv.discriminator.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert int(loaded.discriminator_optimizer.iterations) == 48
        loaded.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)


def test_one_optimizer_where_two_are_needed(teacher):
    adv = AdversarialDistillation(convnet(width=4, name="student"), teacher)
    with pytest.raises(ValueError, match="two optimizers.*discriminator_optimizer="):
        adv.compile(optimizer="adam", loss=CE)
    with pytest.raises(ValueError, match="needs 2 optimizer.*got a list of 3"):
        adv.compile(optimizer=["adam", "adam", "sgd"], loss=CE)
    opt = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="same optimizer object"):
        adv.compile(optimizer=opt, discriminator_optimizer=opt, loss=CE)
    adv.compile(optimizer=["adam", "sgd"], loss=CE)  # a list of two is fine
    assert isinstance(adv.discriminator_optimizer, keras.optimizers.SGD)


def test_bad_discriminator_and_features(teacher):
    bad = keras.Sequential([keras.Input((10,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="one logit"):
        AdversarialDistillation(convnet(width=4, name="student"), teacher, discriminator=bad)
    with pytest.raises(ValueError, match="student_layer, teacher_layer"):
        AdversarialDistillation(convnet(width=4, name="student"), teacher, features="block2")
