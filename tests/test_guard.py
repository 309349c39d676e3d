"""The non-finite guard of `tfkd.training.Trainer`: a step whose losses or gradients are not
finite changes nothing (weights, optimizer slots, BatchNorm statistics), and `fit` raises a
FloatingPointError naming the culprit and the step. Checked bit for bit against a snapshot
taken after the last good step, eagerly traced, under XLA, with mixed precision, for a
scheme with two optimizers, and under MirroredStrategy (in a fresh process)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd.knowledge import Hint, SoftTargets
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BATCH = 8


class PoisonAbove(keras.layers.Layer):
    """Passes the logits through, except for a batch whose image holds a pixel above 10:
    then NaN (a broken teacher)."""

    def call(self, inputs):
        image, logits = inputs
        bad = tf.reduce_any(image > 10.0)
        return tf.where(bad, tf.fill(tf.shape(logits), tf.constant(np.nan, logits.dtype)), logits)


class NanToZero(keras.layers.Layer):
    """Replaces NaN activations by 0: the loss stays finite, the kernels' gradients do not."""

    def call(self, x):
        return tf.where(tf.math.is_nan(x), tf.zeros_like(x), x)


def poisoned_teacher(teacher):
    out = PoisonAbove()([teacher.input, teacher.output])
    return keras.Model(teacher.input, out, name="poisoned_teacher")


def nan_masking_student():
    """Conv - BN - NanToZero - GAP - Dense: NaN pixels give a finite loss and NaN gradients
    (and NaN BatchNorm statistics in the forward pass)."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.5, name="bn")(h)
    h = NanToZero(name="mask")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="student")


def data(n_batches, bad_batch, kind="teacher"):
    rng = np.random.default_rng(0)
    x = rng.random((n_batches * BATCH, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, n_batches * BATCH).astype("int32")
    if bad_batch is not None:
        i = bad_batch * BATCH + 3
        if kind == "teacher":
            x[i, 5, 5, 0] = 100.0   # poisons the teacher only
        else:
            x[i, 5, 5, 0] = np.nan  # NaN pixel
    return x, y


def state(model):
    """Every variable that a step may change: weights (incl. BN statistics), optimizer slots."""
    values = [v.numpy().copy() for v in model.weights]
    for opt in (model.optimizer, getattr(model, "discriminator_optimizer", None)):
        if opt is not None:
            values += [v.numpy().copy() for v in opt.variables]
    return values


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)  # bit for bit, NaN never equal to a number


def good_then_bad(model, x, y, match, good_batches=1):
    """Trains on the good batches, then asserts that the bad rest raises `match` and
    changes nothing."""
    n = good_batches * BATCH
    model.fit(x[:n], y[:n], batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    good = state(model)
    with pytest.raises(FloatingPointError, match=match):
        model.fit(x[n:], y[n:], batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    assert_same(state(model), good)


def distiller_with(teacher, student, jit=False, **kwargs):
    d = tfkd.Distiller(student, teacher, knowledge=[SoftTargets(temperature=4.0),
                                                    Hint("block1", "block1")], **kwargs)
    d.compile(keras.optimizers.Adam(1e-2), CE, metrics=["accuracy"], jit_compile=jit)
    return d


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(0)
    return convnet(width=8, name="teacher")


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_nan_loss_changes_nothing_and_names_the_term(teacher, jit):
    d = distiller_with(poisoned_teacher(teacher), convnet(width=4, name="student"), jit=jit)
    x, y = data(3, bad_batch=2)
    good_then_bad(d, x, y, r"knowledge term 'soft_targets' produced a NaN/Inf loss at "
                           r"optimizer step 2", good_batches=2)
    # The guard resets: training goes on from the last good step with clean data.
    d.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, verbose=0)
    assert int(d.optimizer.iterations.numpy()) == 3


def test_later_steps_of_one_execution_are_skipped_too(teacher):
    # steps_per_execution=2: the bad step comes first, the good one after it in the same
    # compiled loop must not train from the last good weights either.
    d = tfkd.Distiller(convnet(width=4, name="student"), poisoned_teacher(teacher),
                       knowledge=[SoftTargets()])
    d.compile(keras.optimizers.Adam(1e-2), CE, steps_per_execution=2)
    x, y = data(2, bad_batch=0)
    with pytest.raises(FloatingPointError, match="optimizer step 0"):
        d.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    assert int(d.optimizer.iterations.numpy()) == 0
    # Nothing moved: the student is still its initial self.
    fresh = convnet(width=4, name="student")
    assert_same([v.numpy() for v in d.student.weights], [v.numpy() for v in fresh.weights])


def test_nan_gradients_with_a_finite_loss(teacher):
    student = nan_masking_student()
    d = tfkd.Distiller(student, teacher, knowledge=[SoftTargets()])
    d.compile(keras.optimizers.SGD(0.1, momentum=0.9), CE)
    x, y = data(2, bad_batch=1, kind="pixel")
    d.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, verbose=0)
    good = state(d)
    # The loss of the bad batch is finite: only the gradients (and BN statistics) are not.
    loss = d.evaluate(x[BATCH:], y[BATCH:], batch_size=BATCH, verbose=0, return_dict=True)
    assert np.isfinite(loss["loss"])
    with pytest.raises(FloatingPointError, match=r"gradient of .*conv.*non-finite.*step 1"):
        d.fit(x[BATCH:], y[BATCH:], batch_size=BATCH, epochs=1, verbose=0)
    assert_same(state(d), good)
    bn = student.get_layer("bn")
    assert np.isfinite(bn.moving_mean.numpy()).all()


def test_check_numerics_false_lets_the_step_through(teacher):
    student = nan_masking_student()
    d = tfkd.Distiller(student, teacher, knowledge=[SoftTargets()], check_numerics=False)
    d.compile(keras.optimizers.SGD(0.1), CE)
    x, y = data(1, bad_batch=0, kind="pixel")
    d.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert np.isnan(student.get_layer("conv").kernel.numpy()).any()


def test_mixed_precision(teacher):
    bad_teacher = poisoned_teacher(teacher)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        d = distiller_with(bad_teacher, convnet(width=4, name="student"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(d.optimizer, keras.optimizers.LossScaleOptimizer)
    good_then_bad(d, *data(2, bad_batch=1), "knowledge term 'soft_targets'")


def test_a_scheme_with_two_optimizers(teacher):
    adv = tfkd.schemes.AdversarialDistillation(convnet(width=4, name="student"),
                                               poisoned_teacher(teacher))
    adv.compile(optimizer=keras.optimizers.Adam(1e-3),
                discriminator_optimizer=keras.optimizers.Adam(1e-3), loss=CE)
    good_then_bad(adv, *data(2, bad_batch=1), "AdversarialDistillation: .* at optimizer step 1")


def test_multi_teacher_stops(teacher):
    mt = tfkd.schemes.MultiTeacher(convnet(width=4, name="student"),
                                   [teacher, poisoned_teacher(teacher)])
    mt.compile(keras.optimizers.Adam(1e-3), CE)
    x, y = data(1, bad_batch=0)
    with pytest.raises(FloatingPointError, match="loss 'soft_targets_loss'.*step 0"):
        mt.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    fresh = convnet(width=4, name="student")
    assert_same([v.numpy() for v in mt.student.weights], [v.numpy() for v in fresh.weights])


MIRRORED = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np, keras, tfkd
    sys.path.insert(0, sys.argv[1])
    import test_guard as g
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        teacher = g.poisoned_teacher(g.convnet(width=8, name="teacher"))
        d = g.distiller_with(teacher, g.convnet(width=4, name="student"))
    x, y = g.data(2, bad_batch=1)
    # Global batch 16: the bad sample sits on one replica only.
    d.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    good = g.state(d)
    try:
        d.fit(x[8:], y[8:], batch_size=8, epochs=1, verbose=0)
    except FloatingPointError as err:
        assert "knowledge term 'soft_targets'" in str(err), err
        g.assert_same(g.state(d), good)
        print("GUARD-OK")
""")


def test_mirrored_strategy(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    tests = Path(__file__).resolve().parent
    result = subprocess.run([sys.executable, str(script), str(tests)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert "GUARD-OK" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]


def test_evaluate_names_the_term_and_changes_nothing(teacher):
    d = distiller_with(poisoned_teacher(teacher), convnet(width=4, name="student"))
    x, y = data(1, bad_batch=0)
    with pytest.raises(FloatingPointError,
                       match="knowledge term 'soft_targets' was NaN/Inf on an evaluation batch"):
        d.evaluate(x, y, batch_size=BATCH, verbose=0)
    x, y = data(1, bad_batch=None)
    assert np.isfinite(d.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)["loss"])
