"""TeacherAssistant: teacher (width 16) -> assistant (8) -> student (2), one Distiller a stage."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import tfkd
from tfkd.knowledge import SoftTargets
from tfkd.schemes import TeacherAssistant
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_chain_trains_stage_by_stage_and_keeps_every_model(teacher, mnist_small, tmp_path):
    (x, y), (x_test, y_test) = mnist_small
    teacher_weights = [w.numpy().copy() for w in teacher.weights]
    keras.utils.set_random_seed(0)
    assistant = convnet(width=8, name="assistant", seed=1)
    student = convnet(width=2, name="student", seed=2)
    ta = TeacherAssistant(teacher, [assistant], student,
                          knowledge=[SoftTargets(temperature=4.0)])
    ta.compile(keras.optimizers.Adam(1e-2), CE, metrics=["accuracy"])
    history = ta.fit(x[:1024], y[:1024], epochs=2, batch_size=64, verbose=0).history
    for stage in ("assistant", "student"):
        assert {f"{stage}/loss", f"{stage}/student_loss", f"{stage}/soft_targets_loss",
                f"{stage}/accuracy"} <= set(history)
        assert history[f"{stage}/loss"][-1] < history[f"{stage}/loss"][0], history
    # Each stage is a Distiller run; the intermediate model is kept and was trained.
    assert [d.teacher.name for d in ta.distillers] == ["teacher", "assistant"]
    assert all(isinstance(d, tfkd.Distiller) for d in ta.distillers)
    assert ta.assistants[0] is assistant and ta.student is student
    assistant_acc = np.mean(np.argmax(assistant.predict(x_test, verbose=0), -1) == y_test)
    assert assistant_acc > 0.5, assistant_acc
    assert assistant.trainable  # frozen only while it taught
    for before, after in zip(teacher_weights, teacher.weights):
        np.testing.assert_array_equal(before, after.numpy())
    logs = ta.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert logs["accuracy"] > 0.2, logs
    assert student.count_params() == convnet(width=2).count_params()

    ta.save(tmp_path / "ta.keras")
    loaded = keras.models.load_model(tmp_path / "ta.keras")
    assert [m.name for m in loaded.chain] == ["teacher", "assistant", "student"]
    np.testing.assert_allclose(loaded.predict(x_test[:16], verbose=0),
                               student.predict(x_test[:16], verbose=0), atol=1e-6)
    np.testing.assert_allclose(loaded.assistants[0].predict(x_test[:16], verbose=0),
                               assistant.predict(x_test[:16], verbose=0), atol=1e-6)


def test_bad_chains_fail_before_training(teacher):
    with pytest.raises(ValueError, match="at least one assistant"):
        TeacherAssistant(teacher, [], convnet(width=2, name="student"))
    with pytest.raises(ValueError, match="one entry per stage"):
        TeacherAssistant(teacher, [convnet(8, name="a")], convnet(2, name="s"),
                         stage_epochs=[1])
    with pytest.raises(ValueError, match="needs the task `loss`"):
        TeacherAssistant(teacher, [convnet(8, name="a")], convnet(2, name="s")).compile("adam")
    # A knowledge term that does not fit a stage fails at construction, not mid-chain.
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        TeacherAssistant(teacher, [convnet(8, name="a")], convnet(2, name="s"),
                         knowledge=[tfkd.knowledge.Hint("nope", "block2")])
