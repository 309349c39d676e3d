"""The Distiller end to end: training on real MNIST, one pass per side, frozen teacher,
sample weights, saving, callbacks, compilation modes."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfkd
from tfkd.knowledge import Hint, SoftTargets
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def teacher(mnist_small):
    """A small convnet trained for two epochs on 2k MNIST images (~90% test accuracy)."""
    (x, y), _ = mnist_small
    keras.utils.set_random_seed(0)
    model = convnet(width=16, name="teacher")
    model.compile(keras.optimizers.Adam(3e-3), CE, metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return model


def make_distiller(teacher, **kwargs):
    keras.utils.set_random_seed(1)
    student = convnet(width=4, name="student", seed=1)
    kwargs.setdefault("knowledge", [SoftTargets(temperature=4.0), Hint("block2", "block2")])
    distiller = tfkd.Distiller(student, teacher, **kwargs)
    distiller.compile(keras.optimizers.Adam(3e-3), CE, metrics=["accuracy"])
    return distiller


def test_distilled_student_learns_and_kd_loss_falls(teacher, mnist_small):
    (x, y), (x_test, y_test) = mnist_small
    _, teacher_acc = teacher.evaluate(x_test, y_test, verbose=0)
    distiller = make_distiller(teacher)
    history = distiller.fit(x, y, epochs=4, batch_size=64, verbose=0)
    kd = history.history["soft_targets_loss"]
    hint = history.history["hint_loss"]
    assert kd[-1] < 0.7 * kd[0], kd
    assert hint[-1] < hint[0], hint
    logs = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert teacher_acc > 0.8
    assert logs["accuracy"] > 0.6, logs
    assert set(logs) == {"loss", "student_loss", "soft_targets_loss", "hint_loss", "accuracy"}
    # The reported total is the weighted sum of its parts.
    expected = logs["student_loss"] + logs["soft_targets_loss"] + logs["hint_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)


class CountCalls(keras.layers.Layer):
    """Identity layer that counts how often it runs (exact in eager mode)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return x


def counted_net(width, name):
    inputs = keras.Input((28, 28, 1))
    counter = CountCalls(name="counter")
    h = counter(inputs)
    h = keras.layers.Conv2D(width, 3, strides=2, activation="relu", name="feat")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name=name), counter


def test_one_forward_pass_per_side_per_step(mnist_small):
    (x, y), _ = mnist_small
    teacher, t_count = counted_net(8, "teacher")
    student, s_count = counted_net(4, "student")
    distiller = tfkd.Distiller(student, teacher,
                               knowledge=[SoftTargets(), Hint("feat", "feat")])
    distiller.compile("adam", CE, run_eagerly=True)
    t_count.calls = s_count.calls = 0
    distiller.fit(x[:96], y[:96], batch_size=32, epochs=1, verbose=0)
    assert (t_count.calls, s_count.calls) == (3, 3)


def test_teacher_is_bit_identical_after_fit(teacher, mnist_small):
    (x, y), _ = mnist_small
    before = [w.numpy().copy() for w in teacher.weights]  # BN moving statistics included
    distiller = make_distiller(teacher)
    distiller.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    after = [w.numpy() for w in teacher.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    adapter_weights = distiller.knowledge[1].trainable_weights
    assert adapter_weights, "the hint's adapter should be trainable"
    trained_ids = {id(v) for v in distiller.trainable_variables}
    assert not trained_ids & {id(v) for v in teacher.weights}
    assert {id(v) for v in adapter_weights} <= trained_ids


def test_sample_weights_weight_every_term(teacher, mnist_small):
    (x, y), _ = mnist_small
    x, y = x[:64], y[:64]
    distiller = make_distiller(teacher)
    weights = np.concatenate([np.full(32, 2.0), np.zeros(32)]).astype("float32")
    weighted = distiller.evaluate(x, y, sample_weight=weights, batch_size=64, verbose=0,
                                  return_dict=True)
    first_half = distiller.evaluate(x[:32], y[:32], batch_size=32, verbose=0, return_dict=True)
    # Keras' reduction: sum(w * l) / batch. Weight 2 on half the batch, 0 on the rest, equals
    # the unweighted mean over that half.
    for key in ("student_loss", "soft_targets_loss", "hint_loss"):
        assert weighted[key] == pytest.approx(first_half[key], rel=1e-5), key


def test_save_and_load_round_trip(teacher, mnist_small, tmp_path):
    (x, y), _ = mnist_small
    distiller = make_distiller(teacher)
    distiller.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, tfkd.Distiller)
    np.testing.assert_allclose(loaded.predict(x[:8], verbose=0),
                               distiller.predict(x[:8], verbose=0), atol=1e-6)
    # The trained adapter of the hint travels with the distiller checkpoint.
    for a, b in zip(distiller.knowledge[1].weights, loaded.knowledge[1].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    ref = distiller.evaluate(x[:64], y[:64], verbose=0, return_dict=True)
    got = loaded.evaluate(x[:64], y[:64], verbose=0, return_dict=True)
    assert got["hint_loss"] == pytest.approx(ref["hint_loss"], rel=1e-5)
    clone = tfkd.Distiller.from_config(distiller.get_config())
    assert [t.name for t in clone.knowledge] == ["soft_targets", "hint"]


def test_saved_distiller_leaves_the_teachers_optimizer_out(teacher, mnist_small, tmp_path):
    # The teacher was compiled and trained by its user (Adam): its slots are not the
    # Distiller's, and the teacher keeps them after the save.
    import h5py
    import io
    import zipfile

    (x, y), _ = mnist_small
    distiller = make_distiller(teacher)
    distiller.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)
    teacher_slots = len(teacher.optimizer.variables)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    with zipfile.ZipFile(path) as archive:
        names = []
        h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r").visit(names.append)
    optimizers = sorted({n.split("/vars")[0] for n in names if n.endswith("optimizer/vars")})
    assert optimizers == ["optimizer"], optimizers  # the Distiller's own, nothing else
    assert teacher.optimizer is not None and len(teacher.optimizer.variables) == teacher_slots
    loaded = keras.models.load_model(path)
    assert getattr(loaded.teacher, "optimizer", None) is None
    np.testing.assert_allclose(loaded.teacher.predict(x[:8], verbose=0),
                               teacher.predict(x[:8], verbose=0), atol=1e-6)


def test_keras_quantize_is_left_alone(teacher):
    distiller = make_distiller(teacher)
    # Keras' own post-training quantization (int8 weights) keeps its name and meaning; the
    # quantization-aware step is `quantization_aware`.
    assert tfkd.Distiller.quantize is keras.Model.quantize
    assert callable(distiller.quantization_aware)


def test_exported_student_loads_with_plain_keras(teacher, mnist_small, tmp_path):
    (x, _), _ = mnist_small
    distiller = make_distiller(teacher)
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    np.save(tmp_path / "x.npy", x[:4])
    expected = distiller.student.predict(x[:4], verbose=0)
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({str(path)!r})\n"
        f"out = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)\n"
        "assert not any(k.startswith('tfkd') for k in sys.modules), 'tfkd was imported'\n"
        "print(len(m.layers)); np.save(sys.argv[1], out)\n"
    )
    out_path = tmp_path / "out.npy"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-c", code, str(out_path)], check=True, env=env,
                   cwd=tmp_path, timeout=120)
    np.testing.assert_allclose(np.load(out_path), expected, atol=1e-6)


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated preemption")


def test_standard_callbacks(teacher, mnist_small, tmp_path):
    (x, y), (x_val, y_val) = mnist_small
    x, y = x[:256], y[:256]
    ckpt = tmp_path / "best.keras"
    backup = tmp_path / "backup"
    callbacks = [
        keras.callbacks.ModelCheckpoint(ckpt, monitor="val_soft_targets_loss",
                                        save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=5),
        keras.callbacks.TensorBoard(tmp_path / "tb"),
    ]
    distiller = make_distiller(teacher)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        distiller.fit(x, y, validation_data=(x_val[:128], y_val[:128]), epochs=3,
                      batch_size=64, verbose=0,
                      callbacks=callbacks + [keras.callbacks.BackupAndRestore(backup),
                                             StopAfter(1)])
    assert ckpt.exists() and any((tmp_path / "tb").rglob("*.v2"))
    history = distiller.fit(x, y, validation_data=(x_val[:128], y_val[:128]), epochs=3,
                            batch_size=64, verbose=0,
                            callbacks=callbacks + [keras.callbacks.BackupAndRestore(backup)])
    # BackupAndRestore resumed after the two finished epochs: only the third one ran.
    assert len(history.history["loss"]) == 1
    assert "val_hint_loss" in history.history
    assert isinstance(keras.models.load_model(ckpt), tfkd.Distiller)


def test_jit_compile(teacher, mnist_small):
    (x, y), _ = mnist_small
    distiller = make_distiller(teacher)
    distiller.compile(keras.optimizers.Adam(3e-3), CE, jit_compile=True)
    history = distiller.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_mixed_float16(mnist_small):
    (x, y), _ = mnist_small
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        teacher = convnet(width=8, name="teacher")
        student = convnet(width=4, name="student", seed=1)
        distiller = tfkd.Distiller(student, teacher,
                                   knowledge=[SoftTargets(), Hint("block2", "block2")])
        distiller.compile("adam", CE)
        history = distiller.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert student.layers[1].compute_dtype == "float16"
    assert all(np.isfinite(v).all() for v in history.history.values())
    assert history.history["loss"][1] < history.history["loss"][0]


def test_features_inside_a_nested_backbone(mnist_small):
    (x, y), _ = mnist_small
    backbone = convnet(width=8, name="backbone")
    backbone = keras.Model(backbone.input, backbone.get_layer("pool").output, name="backbone")
    inputs = keras.Input((28, 28, 1))
    teacher = keras.Model(inputs, keras.layers.Dense(10, name="head")(backbone(inputs)),
                          name="teacher")
    distiller = make_distiller(teacher, knowledge=[Hint("block1", "backbone/block1")])
    history = distiller.fit(x[:128], y[:128], epochs=2, batch_size=64, verbose=0)
    assert history.history["hint_loss"][1] < history.history["hint_loss"][0]


def test_low_resolution_student_through_an_input_adapter(teacher, mnist_small):
    (x, y), (x_test, y_test) = mnist_small
    student = convnet(width=4, input_shape=(14, 14, 1), name="student")
    distiller = tfkd.Distiller(student, teacher, knowledge=[SoftTargets()],
                               student_input=keras.layers.Resizing(14, 14))
    distiller.compile(keras.optimizers.Adam(3e-3), CE, metrics=["accuracy"])
    distiller.fit(x, y, epochs=2, batch_size=64, verbose=0)
    # predict() sees full-resolution images and resizes them for the student.
    assert distiller.predict(x_test[:4], verbose=0).shape == (4, 10)
    assert distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"] > 0.4


def test_multi_output_student_picks_its_output(teacher, mnist_small):
    (x, y), _ = mnist_small
    base = convnet(width=4, name="base")
    student = keras.Model(base.input, {"logits": base.output,
                                       "embedding": base.get_layer("pool").output})
    distiller = tfkd.Distiller(student, teacher, knowledge=[SoftTargets(output="logits")])
    distiller.compile("adam", {"logits": CE, "embedding": None})
    history = distiller.fit(x[:128], {"logits": y[:128]}, epochs=1, batch_size=64, verbose=0)
    assert np.isfinite(history.history["soft_targets_loss"][0])


def test_keras_distillation_losses_are_accepted(teacher, mnist_small):
    (x, y), _ = mnist_small
    term = keras.distillation.LogitsDistillation(temperature=4.0,
                                                 loss=keras.losses.KLDivergence())
    distiller = make_distiller(teacher, knowledge=[term])
    history = distiller.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0)
    key = next(k for k in history.history if k not in ("loss", "student_loss", "accuracy"))
    assert history.history[key][1] < history.history[key][0]
