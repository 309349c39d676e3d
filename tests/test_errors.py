"""Bad input fails early, before any training, with a message that names the fix."""
import keras
import numpy as np
import pytest

import tfkd
from tfkd.knowledge import DecoupledKD, Hint, SoftTargets
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def pair():
    return convnet(width=8, name="teacher"), convnet(width=4, name="student")


def test_unknown_layer_lists_close_matches(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match=r"No layer named 'blok2'.*Close matches: \['block2'"):
        tfkd.Distiller(student, teacher, knowledge=[Hint("blok2", "block2")])


def test_ambiguous_name_asks_for_a_path():
    def nested(name):
        inner = convnet(width=4, name=f"{name}_inner")
        inputs = keras.Input((28, 28, 1))
        return keras.Model(inputs, inner(inputs) + convnet(width=4, name="other")(inputs),
                           name=name)
    teacher, student = nested("teacher"), convnet(width=4, name="student")
    with pytest.raises(ValueError, match="ambiguous.*full path"):
        tfkd.Distiller(student, teacher, knowledge=[Hint("block2", "block2")])


def test_logit_width_mismatch(pair):
    teacher, _ = pair
    student = convnet(width=4, classes=5, name="student")
    with pytest.raises(ValueError, match=r"10.*5|5.*10"):
        tfkd.Distiller(student, teacher, knowledge=[SoftTargets()])


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match="temperature"):
        SoftTargets(temperature=temperature)


def test_negative_term_weight():
    with pytest.raises(ValueError, match="weight.*>= 0"):
        SoftTargets(weight=-0.5)


def test_negative_student_loss_weight(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="student_loss_weight"):
        tfkd.Distiller(student, teacher, knowledge=[SoftTargets()], student_loss_weight=-1)


def test_missing_teacher(pair):
    _, student = pair
    with pytest.raises(ValueError, match=r"\['soft_targets'\] need a teacher.*TeacherFree"):
        tfkd.Distiller(student, None, knowledge=[SoftTargets()])


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, name="feat")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(10)

    def call(self, x):
        return self.head(self.pool(self.conv(x)))


def test_teacher_not_built(pair):
    _, student = pair
    with pytest.raises(ValueError, match=r"teacher .* is not built.*teacher\(x\[:1\]\)"):
        tfkd.Distiller(student, Subclassed(name="teacher"), knowledge=[SoftTargets()])


def test_built_subclassed_teacher_works_for_response_terms(pair):
    _, student = pair
    teacher = Subclassed(name="teacher")
    teacher(np.zeros((1, 28, 28, 1), "float32"))
    distiller = tfkd.Distiller(student, teacher, knowledge=[SoftTargets()])
    assert distiller.knowledge[0].built


def test_subclassed_model_features_are_unreachable(pair):
    _, student = pair
    teacher = Subclassed(name="teacher")
    teacher(np.zeros((1, 28, 28, 1), "float32"))
    with pytest.raises(ValueError, match="subclassed.*functional API"):
        tfkd.Distiller(student, teacher, knowledge=[Hint("block2", "feat")])


def test_hint_with_incompatible_ranks(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="rank"):
        tfkd.Distiller(student, teacher, knowledge=[Hint("block2", "pool")])


def test_decoupled_kd_needs_three_classes():
    teacher = convnet(width=4, classes=2, name="teacher")
    student = convnet(width=4, classes=2, name="student")
    with pytest.raises(ValueError, match="3 classes|three classes"):
        tfkd.Distiller(student, teacher, knowledge=[DecoupledKD()])


def test_compile_without_loss(pair):
    teacher, student = pair
    distiller = tfkd.Distiller(student, teacher, knowledge=[SoftTargets()])
    with pytest.raises(ValueError, match="no `loss`.*student_loss_weight=0"):
        distiller.compile("adam")
    tfkd.Distiller(student, teacher, knowledge=[SoftTargets()],
                   student_loss_weight=0).compile("adam")  # knowledge alone: fine


def test_nan_loss_names_term_and_step(pair):
    teacher, student = pair
    # A teacher whose logits overflow to +-inf, as a diverged or badly exported one would.
    broken = keras.Model(teacher.input, keras.layers.Rescaling(float("inf"))(teacher.output),
                         name="broken_teacher")
    distiller = tfkd.Distiller(student, broken, knowledge=[SoftTargets()])
    distiller.compile("adam", CE)
    x = np.random.rand(8, 28, 28, 1).astype("float32")
    with pytest.raises(FloatingPointError, match=r"knowledge term 'soft_targets' produced a NaN/Inf loss at optimizer step 0"):
        distiller.fit(x, np.zeros(8, "int32"), batch_size=8, epochs=1, verbose=0)


def test_student_must_be_a_model(pair):
    teacher, _ = pair
    with pytest.raises(TypeError, match="keras.Model"):
        tfkd.Distiller(keras.layers.Dense(10), teacher, knowledge=[SoftTargets()])


def test_teacher_and_student_are_the_same_model(pair):
    teacher, _ = pair
    with pytest.raises(ValueError, match="same model"):
        tfkd.Distiller(teacher, teacher, knowledge=[SoftTargets()])


def test_input_shapes_differ_without_adapter(pair):
    teacher, _ = pair
    student = convnet(width=4, input_shape=(14, 14, 1), name="student")
    with pytest.raises(ValueError, match=r"student_input=keras.layers.Resizing"):
        tfkd.Distiller(student, teacher, knowledge=[SoftTargets()])


def test_unknown_knowledge_object(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="Unknown knowledge term 'kl_divergence'.*soft_targets"):
        tfkd.Distiller(student, teacher, knowledge=["kl_divergence"])
    with pytest.raises(TypeError, match="not a knowledge term"):
        tfkd.Distiller(student, teacher, knowledge=[object()])


def test_nothing_to_train(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="Nothing to train"):
        tfkd.Distiller(student, teacher, knowledge=[], student_loss_weight=0)


def test_multi_output_needs_a_selector(pair):
    teacher, _ = pair
    base = convnet(width=4, name="base")
    student = keras.Model(base.input, [base.output, base.get_layer("pool").output])
    with pytest.raises(ValueError, match="output="):
        tfkd.Distiller(student, teacher, knowledge=[SoftTargets()])


def test_labels_required_by_a_term(pair):
    teacher, student = pair
    distiller = tfkd.Distiller(student, teacher, knowledge=[DecoupledKD()],
                               student_loss_weight=0)
    distiller.compile("adam")
    with pytest.raises(ValueError, match="need labels"):
        distiller.fit(np.zeros((8, 28, 28, 1), "float32"), batch_size=8, verbose=0)


def test_dynamic_input_sizes_are_compatible():
    inputs = keras.Input((None, None, 1))
    h = keras.layers.Conv2D(4, 3, name="block2")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    teacher = keras.Model(inputs, keras.layers.Dense(10)(h), name="teacher")
    distiller = tfkd.Distiller(convnet(width=4, name="student"), teacher,
                               knowledge=[SoftTargets()])
    distiller.compile("adam", CE)
    history = distiller.fit(np.random.rand(8, 28, 28, 1).astype("float32"),
                            np.zeros(8, "int32"), batch_size=8, verbose=0)
    assert np.isfinite(history.history["soft_targets_loss"][0])


@pytest.mark.parametrize("which", ["teacher_input", "student_input"])
def test_input_adapter_must_be_callable(pair, which):
    teacher, student = pair
    with pytest.raises(TypeError, match=f"`{which}` must be a callable.*Resizing"):
        tfkd.Distiller(student, teacher, knowledge=[SoftTargets()], **{which: (14, 14)})


def test_one_hint_two_distillers(pair):
    # The hint's adapter is built for the first Distiller's student: reusing the term in a
    # second Distiller would silently share (and fight over) it.
    teacher, student = pair
    hint = Hint("block2", "block2")
    first = tfkd.Distiller(student, teacher, knowledge=[hint])
    with pytest.raises(ValueError, match="already.*fresh"):
        tfkd.Distiller(convnet(width=4, name="other"), teacher, knowledge=[hint])
    assert first.knowledge[0] is hint
    # A fresh copy per Distiller works.
    tfkd.Distiller(convnet(width=4, name="other"), teacher,
                   knowledge=[Hint.from_config(hint.get_config())])


def test_input_check_handles_multi_input_models():
    def two_inputs(second, name):
        a, b = keras.Input((8,), name="a"), keras.Input((second,), name="b")
        h = keras.layers.Concatenate()([a, keras.layers.Dense(8)(b)])
        return keras.Model([a, b], keras.layers.Dense(3)(h), name=name)

    tfkd.Distiller(two_inputs(4, "student"), two_inputs(4, "teacher"), knowledge=[SoftTargets()])
    with pytest.raises(ValueError, match=r"teacher takes inputs of shape \[\(8,\), \(5,\)\].*"
                                         r"student \[\(8,\), \(4,\)\]"):
        tfkd.Distiller(two_inputs(4, "student"), two_inputs(5, "teacher"),
                       knowledge=[SoftTargets()])
