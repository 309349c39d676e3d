"""MultiTeacher: two teachers of different architecture and input size teach one student."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tfkd.knowledge import Hint
from tfkd.schemes import MultiTeacher
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def small_teacher(mnist_small):
    """A second, different teacher: 14x14 inputs, width 8, one epoch."""
    (x, y), _ = mnist_small
    keras.utils.set_random_seed(2)
    model = convnet(width=8, input_shape=(14, 14, 1), name="teacher_14px", seed=2)
    model.compile(keras.optimizers.Adam(1e-2), CE)
    model.fit(keras.layers.Resizing(14, 14)(x), y, epochs=1, batch_size=64, verbose=0)
    return model


def make(teacher, small_teacher, **kwargs):
    keras.utils.set_random_seed(1)
    mt = MultiTeacher(
        convnet(width=4, name="student", seed=1), [teacher, small_teacher],
        teacher_inputs=[None, keras.layers.Resizing(14, 14)],
        hints=[(0, Hint("block2", "block2")), ("teacher_14px", ("block1", "block1"))],
        **kwargs)
    mt.compile(keras.optimizers.Adam(1e-2), CE, metrics=["accuracy"])
    return mt


@pytest.mark.parametrize("weighting", ["confidence", "learned"])
def test_student_learns_from_two_teachers(teacher, small_teacher, mnist_small, weighting,
                                          tmp_path):
    (x, y), (x_test, y_test) = mnist_small
    mt = make(teacher, small_teacher, weighting=weighting)
    history = mt.fit(x[:1024], y[:1024], epochs=3, batch_size=64, verbose=0).history
    expected = {"loss", "student_loss", "soft_targets_loss", "hint_teacher_loss",
                "hint_teacher_14px_loss", "teacher_weight", "teacher_14px_weight", "accuracy"}
    if weighting == "learned":
        expected.add("ensemble_loss")
    assert set(history) == expected
    for key in ("loss", "student_loss", "soft_targets_loss"):
        assert history[key][-1] < 0.8 * history[key][0], (key, history[key])
    # Weights are a distribution over the teachers, per sample.
    total = np.add(history["teacher_weight"], history["teacher_14px_weight"])
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    if weighting == "confidence":
        # The better (28 px, 3 epochs) teacher is trusted more.
        assert history["teacher_weight"][-1] > 0.5, history
    else:
        assert history["ensemble_loss"][-1] < history["ensemble_loss"][0]
    logs = mt.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert logs["accuracy"] > 0.5, logs
    assert mt.student.count_params() == convnet(width=4).count_params()

    mt.save(tmp_path / "mt.keras")
    loaded = keras.models.load_model(tmp_path / "mt.keras")
    assert loaded.weighting == weighting and [t.name for t in loaded.teachers] == [
        "teacher", "teacher_14px"]
    np.testing.assert_allclose(loaded.predict(x_test[:16], verbose=0),
                               mt.predict(x_test[:16], verbose=0), atol=1e-5)
    if weighting == "learned":
        np.testing.assert_allclose(loaded.teacher_logit_weights.numpy(),
                                   mt.teacher_logit_weights.numpy())


def test_fixed_weights_are_normalised(teacher, small_teacher):
    mt = make(teacher, small_teacher, teacher_weights=[3.0, 1.0])
    w = mt.weights_for([np.zeros((2, 10), "float32")] * 2, None)
    np.testing.assert_allclose(np.asarray(w), [[0.75, 0.25]] * 2)


def test_confidence_weights_follow_the_teachers_correctness(teacher, small_teacher):
    mt = make(teacher, small_teacher, weighting="confidence")
    right = np.array([[5.0, 0.0, 0.0]], "float32")
    wrong = np.array([[0.0, 5.0, 0.0]], "float32")
    w = np.asarray(mt.weights_for([right, wrong], np.array([0])))
    assert w[0, 0] > 0.99 and w.sum() == pytest.approx(1.0)


def test_teachers_with_different_class_counts_are_refused(teacher):
    other = convnet(width=4, classes=5, name="five_class_teacher")
    with pytest.raises(ValueError, match=r"different numbers of classes: \{'teacher': 10, "
                                         r"'five_class_teacher': 5\}"):
        MultiTeacher(convnet(width=4, name="student"), [teacher, other])


def test_a_teacher_with_another_input_size_needs_an_adapter(teacher, small_teacher):
    with pytest.raises(ValueError, match="teacher `teacher_14px` takes inputs of shape.*"
                                         "teacher_inputs="):
        MultiTeacher(convnet(width=4, name="student"), [teacher, small_teacher])
