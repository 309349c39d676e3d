"""SelfDistillation: a head on `block1` learns from the network's own output and deepest feature."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tfkd.schemes import SelfDistillation
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def plain_keras(model):
    return all(type(layer).__module__.startswith("keras.")
               for layer in model._flatten_layers(include_self=True))


def test_heads_learn_and_are_dropped_from_the_export(mnist_small, tmp_path):
    (x, y), (x_test, y_test) = mnist_small
    keras.utils.set_random_seed(0)
    student = convnet(width=8, name="student")
    params = student.count_params()
    names = [layer.name for layer in student.layers]
    sd = SelfDistillation(student, stages=["block1"], hint_layer="block2")
    sd.compile(keras.optimizers.Adam(1e-2), CE, metrics=["accuracy"])
    history = sd.fit(x, y, epochs=3, batch_size=64, verbose=0).history
    assert set(history) == {"loss", "student_loss", "block1_head_loss", "block1_kd_loss",
                            "block1_hint_loss", "student_accuracy", "block1_accuracy"}
    for key in ("student_loss", "block1_head_loss"):
        assert history[key][-1] < 0.9 * history[key][0], (key, history[key])
    assert history["block1_accuracy"][-1] > history["block1_accuracy"][0] + 0.05, history
    # The soft-target and hint terms chase moving targets (the deepest output and feature
    # sharpen and grow as the network learns): present and finite, not necessarily falling.
    assert all(np.isfinite(history["block1_hint_loss"] + history["block1_kd_loss"]))
    logs = sd.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert logs["student_accuracy"] > 0.7 and logs["block1_accuracy"] > 0.15, logs

    # The exported student is the original model: no head, same layers and parameters.
    assert sd.student is student and plain_keras(student)
    assert student.count_params() == params
    assert [layer.name for layer in student.layers] == names
    assert not any("head" in w.path for w in student.weights)
    np.testing.assert_allclose(sd.predict(x_test[:16], verbose=0),
                               student.predict(x_test[:16], verbose=0), atol=1e-6)

    # An early exit: the student cut at block1, then the head; cheaper than the full model.
    exit_model = sd.early_exit("block1")
    assert plain_keras(exit_model)
    assert "conv2" not in [layer.name for layer in exit_model.layers]
    exit_acc = np.mean(np.argmax(exit_model.predict(x_test, verbose=0), -1) == y_test)
    assert exit_acc == pytest.approx(logs["block1_accuracy"], abs=1e-6)
    exit_model.save(tmp_path / "exit.keras")
    keras.models.load_model(tmp_path / "exit.keras")

    sd.save(tmp_path / "sd.keras")
    loaded = keras.models.load_model(tmp_path / "sd.keras")
    assert loaded.stages == ["block1"] and loaded.hint_layer == "block2"
    np.testing.assert_allclose(loaded.early_exit("block1").predict(x_test[:16], verbose=0),
                               exit_model.predict(x_test[:16], verbose=0), atol=1e-5)
    loaded.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)


def test_soft_targets_only_without_a_hint_layer(mnist_small):
    (x, y), _ = mnist_small
    sd = SelfDistillation(convnet(width=4, name="student"), stages=["block1", "block2"])
    sd.compile(keras.optimizers.Adam(1e-2), CE)
    history = sd.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0).history
    assert "block1_hint_loss" not in history and "block2_kd_loss" in history
    assert history["loss"][-1] < history["loss"][0]


def test_unknown_stage_lists_close_matches():
    with pytest.raises(ValueError, match=r"SelfDistillation: No layer named 'blok1'.*"
                                         r"Close matches: \['block1'"):
        SelfDistillation(convnet(width=4), stages=["blok1"])
    with pytest.raises(ValueError, match="No layer named 'blockk2'"):
        SelfDistillation(convnet(width=4), stages=["block1"], hint_layer="blockk2")
    with pytest.raises(ValueError, match="at least one stage"):
        SelfDistillation(convnet(width=4), stages=[])


def test_head_depth_adds_convs_and_round_trips(mnist_small, tmp_path):
    (x, y), _ = mnist_small
    keras.utils.set_random_seed(0)
    shallow = SelfDistillation(convnet(width=4, name="student"), ["block1"],
                               hint_layer="block2")
    deep = SelfDistillation(convnet(width=4, name="student"), ["block1"], hint_layer="block2",
                            head_depth=3)
    names = [layer.name for layer in deep.heads[0].layers]
    assert "block1_head_conv2" in names and "block1_head_conv3" in names
    extra = deep.heads[0].count_params() - shallow.heads[0].count_params()
    channels = deep.heads[0].get_layer("block1_head_conv2").filters
    assert extra == 2 * (9 * channels * channels + channels)
    deep.compile(keras.optimizers.Adam(1e-2), CE)
    history = deep.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0).history
    assert history["block1_head_loss"][-1] < history["block1_head_loss"][0]
    deep.save(tmp_path / "deep.keras")
    loaded = keras.models.load_model(tmp_path / "deep.keras")
    assert loaded.head_depth == 3
    np.testing.assert_allclose(loaded.early_exit("block1").predict(x[:8], verbose=0),
                               deep.early_exit("block1").predict(x[:8], verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="head_depth must be an integer >= 1"):
        SelfDistillation(convnet(width=4), ["block1"], head_depth=0)
