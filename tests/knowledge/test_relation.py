"""Relation-based terms: golden values against NumPy (loops over pairs/triplets), weights."""
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_numpy import np_huber
from tfkd.knowledge import RelationalKD, SimilarityPreserving, View

B = 6


def kt(*shape):
    return keras.KerasTensor((None,) + shape)


# ---------------------------------------------------------------- NumPy references (loops)
def ref_rkd(t, s, w, distance, angle):
    t = t.reshape(len(t), -1).astype(np.float64)
    s = s.reshape(len(s), -1).astype(np.float64)
    n = len(t)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    wp = np.array([w[i] * w[j] for i, j in pairs])

    def dists(x):
        return np.array([np.linalg.norm(x[i] - x[j]) for i, j in pairs])

    dt, ds = dists(t), dists(s)
    dt = dt / ((wp * dt).sum() / wp.sum())
    ds = ds / ((wp * ds).sum() / wp.sum())
    loss_d = (wp * np_huber(ds - dt)).sum() / wp.sum()

    def cos(x, i, j, k):
        a, b = x[i] - x[j], x[k] - x[j]
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    triplets = list(itertools.permutations(range(n), 3))
    wt = np.array([w[i] * w[j] * w[k] for i, j, k in triplets])
    at = np.array([cos(t, *tr) for tr in triplets])
    as_ = np.array([cos(s, *tr) for tr in triplets])
    loss_a = (wt * np_huber(as_ - at)).sum() / wt.sum()
    return distance * loss_d + angle * loss_a


def ref_sp(a_t, a_s, w):
    a_t = a_t.reshape(len(a_t), -1).astype(np.float64)
    a_s = a_s.reshape(len(a_s), -1).astype(np.float64)
    # Paper formula on the batch in which sample i appears w_i times (integer weights here).
    idx = np.repeat(np.arange(len(w)), w.astype(int))
    a_t, a_s = a_t[idx], a_s[idx]
    b = len(idx)

    def g(a):
        gm = a @ a.T
        return gm / np.linalg.norm(gm, axis=1, keepdims=True)

    return ((g(a_t) - g(a_s)) ** 2).sum() / b**2


@pytest.fixture
def embeddings(rng):
    # Teacher and student widths differ on purpose; a scaled teacher keeps distances in both
    # Huber regimes.
    t = rng.normal(scale=2.0, size=(B, 12)).astype("float32")
    s = rng.normal(size=(B, 5)).astype("float32")
    return t, s


# ---------------------------------------------------------------- RelationalKD
@pytest.mark.parametrize("distance,angle", [(1.0, 2.0), (25.0, 0.0), (0.0, 50.0)])
def test_rkd_golden_on_outputs(embeddings, distance, angle):
    t, s = embeddings
    term = RelationalKD(distance=distance, angle=angle)
    got = float(term.loss(View(t), View(s)))
    assert got == pytest.approx(ref_rkd(t, s, np.ones(B), distance, angle), rel=1e-5)


def test_rkd_golden_on_features_with_weights(rng):
    t = rng.normal(size=(B, 3, 3, 4)).astype("float32")
    s = rng.normal(size=(B, 2, 2, 3)).astype("float32")
    w = np.array([1.0, 0.5, 2.0, 0.0, 1.0, 3.0], "float32")
    term = RelationalKD(student_layer="sl", teacher_layer="tl")
    assert term.teacher_features == ("tl",) and term.student_features == ("sl",)
    term.build_term(View(kt(10), {"tl": kt(3, 3, 4)}), View(kt(10), {"sl": kt(2, 2, 3)}))
    got = float(term.loss(View(None, {"tl": t}), View(None, {"sl": s}), sample_weight=w))
    assert got == pytest.approx(ref_rkd(t, s, w, 1.0, 2.0), rel=1e-5)


def test_rkd_zero_weight_removes_sample(embeddings):
    t, s = embeddings
    term = RelationalKD()
    w = np.ones(B, "float32")
    w[2] = 0.0
    got = float(term.loss(View(t), View(s), sample_weight=w))
    keep = np.arange(B) != 2
    assert got == pytest.approx(float(term.loss(View(t[keep]), View(s[keep]))), rel=1e-5)
    s2 = s.copy()
    s2[2] += 50.0
    assert float(term.loss(View(t), View(s2), sample_weight=w)) == pytest.approx(got, rel=1e-5)


def test_rkd_is_scale_invariant_and_zero_on_a_copy(embeddings):
    t, _ = embeddings
    assert float(RelationalKD().loss(View(t), View(3.0 * t))) == pytest.approx(0.0, abs=1e-5)


def test_rkd_gradient_is_finite_with_duplicates(embeddings):
    t, s = embeddings
    s = s.copy()
    s[1] = s[0]  # a zero distance off the diagonal
    sv = tf.Variable(s)
    with tf.GradientTape() as tape:
        loss = RelationalKD().loss(View(t), View(sv))
    g = np.asarray(tape.gradient(loss, sv))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(g)) and np.any(g != 0)


def test_rkd_tiny_batches_give_zero_not_nan(embeddings):
    t, s = embeddings
    assert float(RelationalKD().loss(View(t[:1]), View(s[:1]))) == 0.0
    two = float(RelationalKD(distance=0.0, angle=1.0).loss(View(t[:2]), View(s[:2])))
    assert two == 0.0


def test_rkd_validation():
    with pytest.raises(ValueError, match="distance.*>= 0"):
        RelationalKD(distance=-1)
    with pytest.raises(ValueError, match="angle.*>= 0"):
        RelationalKD(angle=-1)
    with pytest.raises(ValueError, match="give both `student_layer` and `teacher_layer`"):
        RelationalKD(student_layer="s")
    with pytest.raises(ValueError, match="needs a teacher"):
        RelationalKD().build_term(None, View(kt(10)))
    with pytest.raises(ValueError, match="not tapped"):
        RelationalKD(student_layer="s", teacher_layer="t").build_term(View(kt(3)), View(kt(3), {"s": kt(3)}))


def test_rkd_graph_mode_unknown_batch(embeddings):
    t, s = embeddings
    term = RelationalKD()

    @tf.function(input_signature=[tf.TensorSpec((None, 12)), tf.TensorSpec((None, 5)),
                                  tf.TensorSpec((None,))])
    def fn(a, b, w):
        return term.loss(View(a), View(b), sample_weight=w)

    w = np.linspace(0.5, 1.5, B).astype("float32")
    assert float(fn(t, s, w)) == pytest.approx(float(term.loss(View(t), View(s), sample_weight=w)), rel=1e-5)


# ---------------------------------------------------------------- SimilarityPreserving
def test_sp_golden(rng):
    a_t = rng.normal(size=(B, 4, 4, 8)).astype("float32")
    a_s = rng.normal(size=(B, 2, 2, 3)).astype("float32")
    term = SimilarityPreserving("sl", "tl")
    term.build_term(View(kt(10), {"tl": kt(4, 4, 8)}), View(kt(10), {"sl": kt(2, 2, 3)}))
    got = float(term.loss(View(None, {"tl": a_t}), View(None, {"sl": a_s})))
    assert got == pytest.approx(ref_sp(a_t, a_s, np.ones(B)), rel=1e-5)


def test_sp_weights_count_like_copies_and_zero_removes(rng):
    a_t = rng.normal(size=(B, 7)).astype("float32")
    a_s = rng.normal(size=(B, 9)).astype("float32")
    w = np.array([2.0, 0.0, 1.0, 3.0, 1.0, 1.0], "float32")
    term = SimilarityPreserving("sl", "tl")
    got = float(term.loss(View(None, {"tl": a_t}), View(None, {"sl": a_s}), sample_weight=w))
    assert got == pytest.approx(ref_sp(a_t, a_s, w), rel=1e-5)


def test_sp_zero_for_identical_geometry(rng):
    a = rng.normal(size=(B, 7)).astype("float32")
    term = SimilarityPreserving("sl", "tl")
    assert float(term.loss(View(None, {"tl": a}), View(None, {"sl": 2.0 * a}))) == pytest.approx(0.0, abs=1e-7)


def test_sp_validation():
    with pytest.raises(TypeError, match="layer name"):
        SimilarityPreserving("s", 3)
    with pytest.raises(ValueError, match="weight.*>= 0"):
        SimilarityPreserving("s", "t", weight=-0.5)
    with pytest.raises(ValueError, match="teacher feature 't' was not tapped"):
        SimilarityPreserving("s", "t").build_term(View(kt(3), {}), View(kt(3), {"s": kt(3)}))


def test_rkd_translation_invariant_in_float32(embeddings):
    # Features with a large common offset (post-ReLU-like) must not lose precision.
    t, s = embeddings
    base = float(RelationalKD().loss(View(t), View(s)))
    shifted = float(RelationalKD().loss(View(t + 300.0), View(s - 500.0)))
    assert shifted == pytest.approx(base, rel=1e-4)
    assert base == pytest.approx(ref_rkd(t + 300.0, s - 500.0, np.ones(B), 1.0, 2.0), rel=1e-4)
