"""CRD: float64 golden values of the InfoNCE bound, the FIFO memory, training, validation."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd.knowledge import CRD, View


def np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_logsumexp(x):
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


def np_crd(e_t, e_s, temp, w, mem_t=None, mem_s=None, valid=None):
    """The paper's two-sided bound in its softmax form, sample by sample (float64)."""
    keep = np.flatnonzero(w > 0)
    cols_t, cols_s = e_t[keep], e_s[keep]
    if mem_t is not None:
        cols_t = np.concatenate([cols_t, mem_t[valid > 0]])
        cols_s = np.concatenate([cols_s, mem_s[valid > 0]])
    total = 0.0
    for i in keep:
        l_s = -(e_s[i] @ e_t[i] / temp - np_logsumexp(cols_t @ e_s[i] / temp))
        l_t = -(e_t[i] @ e_s[i] / temp - np_logsumexp(cols_s @ e_t[i] / temp))
        total += w[i] * 0.5 * (l_s + l_t)
    return total / w[keep].sum()


def built(c_t=6, c_s=3, **kwargs):
    kwargs = {"embedding_dim": 5, "temperature": 0.2, "memory_size": 0, **kwargs}
    term = CRD("s", "t", **kwargs)
    term.build_term(View(None, {"t": keras.KerasTensor((None, c_t))}),
                    View(None, {"s": keras.KerasTensor((None, c_s))}))
    return term


def embeddings(term, f_t, f_s):
    """Each side's embedding with the term's own head weights, in float64."""
    def head(layer, f):
        kernel, bias = (np.asarray(v, np.float64) for v in layer.get_weights())
        return np_unit(f.reshape(len(f), -1).astype(np.float64) @ kernel + bias)
    return head(term.teacher_head, f_t), head(term.student_head, f_s)


def views(f_t, f_s):
    return View(None, {"t": f_t}), View(None, {"s": f_s})


def test_crd_golden_with_batch_negatives_and_sample_weights(rng):
    term = built()
    f_t = rng.normal(size=(5, 6)).astype("float32")
    f_s = rng.normal(size=(5, 3)).astype("float32")
    e_t, e_s = embeddings(term, f_t, f_s)
    for w in (np.ones(5), np.array([1.0, 0.0, 2.0, 0.5, 1.0])):
        got = float(term.loss(*views(f_t, f_s), None, w.astype("float32")))
        assert got == pytest.approx(np_crd(e_t, e_s, 0.2, w), rel=1e-5)
    assert float(term.loss(*views(f_t, f_s))) == pytest.approx(np_crd(e_t, e_s, 0.2, np.ones(5)),
                                                               rel=1e-5)


def test_crd_maps_are_flattened_into_the_heads(rng):
    term = CRD("s", "t", embedding_dim=4, temperature=0.5, memory_size=0)
    term.build_term(View(None, {"t": keras.KerasTensor((None, 2, 2, 3))}),
                    View(None, {"s": keras.KerasTensor((None, 2, 2, 2))}))
    assert tuple(term.teacher_head.kernel.shape) == (12, 4)
    f_t = rng.normal(size=(4, 2, 2, 3)).astype("float32")
    f_s = rng.normal(size=(4, 2, 2, 2)).astype("float32")
    e_t, e_s = embeddings(term, f_t, f_s)
    assert float(term.loss(*views(f_t, f_s))) == pytest.approx(
        np_crd(e_t, e_s, 0.5, np.ones(4)), rel=1e-5)


def test_crd_memory_is_a_fifo_queue_of_both_sides_read_before_the_push(rng):
    size = 5  # 3 samples a call: the second call wraps around
    term = built(memory_size=size)
    assert {v.name for v in term.non_trainable_weights} == {
        "memory_teacher", "memory_student", "memory_valid", "memory_pointer"}
    assert len(term.trainable_weights) == 4  # the two heads only
    mem_t, mem_s, valid, pointer = np.zeros((size, 5)), np.zeros((size, 5)), np.zeros(size), 0
    step = tf.function(lambda t, s, w: term.loss(*views(t, s), None, w), jit_compile=True)
    for i, w in enumerate(([1.0, 1.0, 1.0], [0.0, 2.0, 1.0], [1.0, 0.5, 1.0])):
        f_t = rng.normal(size=(3, 6)).astype("float32")
        f_s = rng.normal(size=(3, 3)).astype("float32")
        w = np.array(w, "float32")
        e_t, e_s = embeddings(term, f_t, f_s)
        ref = np_crd(e_t, e_s, 0.2, w, mem_t, mem_s, valid)
        # The first call eagerly, the next ones compiled with XLA: one queue for both.
        got = float(step(f_t, f_s, w) if i else term.loss(*views(f_t, f_s), None, w))
        assert got == pytest.approx(ref, rel=1e-5), i
        index = (pointer + np.arange(3)) % size
        keep = (w > 0)[:, None]  # weight-0 samples leave no trace in the queue
        mem_t[index], mem_s[index] = e_t * keep, e_s * keep
        valid[index], pointer = keep[:, 0], (pointer + 3) % size
        np.testing.assert_allclose(term.memory_teacher.numpy(), mem_t, atol=1e-6)
        np.testing.assert_allclose(term.memory_student.numpy(), mem_s, atol=1e-6)
        np.testing.assert_array_equal(term.memory_valid.numpy(), valid)
        assert int(term.memory_pointer.numpy()) == pointer
    # Evaluation reads the queue and pushes nothing.
    before = term.memory_teacher.numpy().copy()
    term.loss(*views(f_t * 2.0, f_s), None, None, training=False)
    np.testing.assert_array_equal(term.memory_teacher.numpy(), before)


def test_crd_never_stores_a_non_finite_embedding(rng):
    term = built(memory_size=8)
    f_t = rng.normal(size=(4, 6)).astype("float32")
    f_t[1] = np.nan
    term.loss(*views(f_t, rng.normal(size=(4, 3)).astype("float32")))
    assert term.memory_valid.numpy().sum() == 3 and np.isfinite(term.memory_teacher.numpy()).all()


def test_crd_gradients_reach_both_heads_and_the_student(rng):
    term = built()
    f_t = tf.constant(rng.normal(size=(4, 6)).astype("float32"))
    f_s = tf.Variable(rng.normal(size=(4, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        value = term.loss(*views(f_t, f_s))
    grads = tape.gradient(value, [f_s, *term.trainable_weights])
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("memory_size", [0, 16])
def test_crd_aligns_the_student_embedding_with_the_teacher(rng, memory_size):
    """Minimising CRD over shuffled batches makes each student embedding pick out its teacher's."""
    term = built(c_t=8, c_s=8, embedding_dim=8, memory_size=memory_size)
    f_t = rng.normal(size=(64, 8)).astype("float32")
    f_s = tf.Variable(rng.normal(size=(64, 8)).astype("float32"))
    optimizer = keras.optimizers.Adam(0.02)
    variables = [f_s, *term.trainable_weights]

    def retrieval():
        e_t, e_s = embeddings(term, f_t, f_s.numpy())
        return float(np.mean(np.argmax(e_s @ e_t.T, axis=1) == np.arange(64)))

    before, epochs = retrieval(), []
    for _ in range(20):
        losses = []
        for batch in rng.permutation(64).reshape(8, 8):
            with tf.GradientTape() as tape:
                value = term.loss(*views(tf.gather(f_t, batch), tf.gather(f_s, batch)))
            optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
            losses.append(float(value))
        epochs.append(np.mean(losses))
    # Chance is log(number of columns): 8 in the batch, plus the full queue.
    assert epochs[-1] < 0.8 * np.log(8 + memory_size) and epochs[-1] < epochs[1], epochs
    # Retrieval among all 64 samples, though each step saw 8 (+ the queue): 0.61 / 0.77 here.
    assert retrieval() > before + 0.5


def test_crd_trains_in_a_distiller_and_its_state_stays_out_of_the_student(rng, tmp_path):
    def model(width, name, seed):
        keras.utils.set_random_seed(seed)
        x = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(width, 3, activation="relu")(x)
        h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
        return keras.Model(x, keras.layers.Dense(4)(h), name=name)

    term = CRD("pool", "pool", embedding_dim=8, temperature=0.2, memory_size=16)
    student = model(4, "student", 1)
    distiller = tfkd.Distiller(student, model(8, "teacher", 0), knowledge=[term])
    distiller.compile(keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 4, size=32)
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0).history["crd_loss"]
    assert np.isfinite(history).all() and float(term.memory_valid.numpy().sum()) == 16
    queue = term.memory_teacher.numpy().copy()
    distiller.evaluate(x[::-1] * 2.0, y, batch_size=8, verbose=0)
    np.testing.assert_array_equal(term.memory_teacher.numpy(), queue)  # evaluation pushes nothing
    # The queue is the distiller's state (checkpointed with it), not the student's.
    names = {v.path for v in distiller.weights}
    assert any("memory_teacher" in n for n in names)
    assert not any("memory" in v.path or "crd" in v.path for v in student.weights)
    path = tmp_path / "distiller.weights.h5"
    distiller.save_weights(path)
    saved = term.memory_teacher.numpy().copy()
    term.memory_teacher.assign(np.zeros_like(saved))
    distiller.load_weights(path)
    np.testing.assert_array_equal(term.memory_teacher.numpy(), saved)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(memory_size=-1), ValueError, "CRD: `memory_size` must be an integer >= 0"),
    (dict(memory_size=2.5), ValueError, "CRD: `memory_size` must be an integer >= 0"),
    (dict(embedding_dim=0), ValueError, "CRD: `embedding_dim` must be an integer >= 1"),
    (dict(temperature=0.0), ValueError, "CRD: `temperature` must be a finite number > 0"),
    (dict(student_layer=""), TypeError, "CRD: `student_layer` must be a layer name"),
])
def test_crd_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        CRD(**{"student_layer": "s", "teacher_layer": "t", **kwargs})


def test_crd_needs_a_known_feature_size_and_build_term():
    term = CRD("s", "t")
    with pytest.raises(ValueError, match="needs a known size per sample"):
        term.build_term(View(None, {"t": keras.KerasTensor((None, None, None, 8))}),
                        View(None, {"s": keras.KerasTensor((None, 4))}))
    with pytest.raises(ValueError, match="call `build_term` first"):
        CRD("s", "t").loss(*views(np.ones((2, 4), "float32"), np.ones((2, 4), "float32")))
