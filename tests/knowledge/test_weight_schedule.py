"""A term's weight as a schedule: one mechanism for every term and trainer (DKD's warm-up)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import tfkd
from tfkd.knowledge import DecoupledKD, SoftTargets, warmup
from tiny_models import convnet


def test_warmup_is_linear_then_holds():
    schedule = warmup(2.0, steps=8)
    steps = np.arange(0, 20)
    got = np.array([float(schedule(int(s))) for s in steps])
    np.testing.assert_allclose(got, 2.0 * np.minimum(steps / 8.0, 1.0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("args, match", [((1.0, 0), "steps"), ((1.0, 2.5), "steps"),
                                         ((-1.0, 10), "weight")])
def test_warmup_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        warmup(*args)


def test_a_callable_weight_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        SoftTargets(weight=lambda step: 1.0)


def test_spec_and_config_round_trip_keep_the_schedule():
    term = tfkd.knowledge.get("dkd:weight=warmup(0.5,10),beta=4")
    assert isinstance(term, DecoupledKD) and term.beta == 4
    assert float(term.weight(5)) == pytest.approx(0.25)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert float(again.weight(5)) == pytest.approx(0.25)
    assert float(again.weight(100)) == pytest.approx(0.5)
    with pytest.raises(TypeError, match="warmup.*steps"):
        tfkd.knowledge.get("dkd:weight=warmup(1.0,0)")


def test_the_weight_follows_the_optimizer_step_in_fit():
    """Knowledge only (student_loss_weight=0): at step 0 the warm-up weight is 0, so Adam's
    first update is exactly zero; later steps move the student, and the term reports the
    schedule's value at the optimizer's step."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=8)
    teacher, student = convnet(width=4, seed=1, name="t"), convnet(width=4, seed=2, name="s")
    term = SoftTargets(weight=warmup(1.0, steps=4))
    distiller = tfkd.Distiller(teacher, student, knowledge=[term], student_loss_weight=0.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    assert float(term.current_weight()) == 0.0
    student = distiller.student  # the trained one
    before = [w.numpy().copy() for w in student.trainable_weights]
    assert before
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # one step, at weight 0
    for old, new in zip(before, student.trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())
    distiller.fit(x, y, batch_size=8, epochs=2, verbose=0)  # steps 1 and 2: 0.25, 0.5
    assert int(distiller.optimizer.iterations) == 3
    assert float(term.current_weight()) == pytest.approx(0.75)
    moved = max(float(np.abs(old - new.numpy()).max())
                for old, new in zip(before, student.trainable_weights))
    assert moved > 1e-4
