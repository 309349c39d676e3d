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


# ---------------------------------------------------------------- DIST
from tfkd.knowledge import DIST, PKT  # noqa: E402


def ref_dist(z_t, z_s, w, beta, gamma, tau, eps=1e-8):
    """The paper's DIST on the batch in which sample i appears w_i times (integer weights)."""
    idx = np.repeat(np.arange(len(w)), np.asarray(w).astype(int))
    z_t = np.asarray(z_t, np.float64)[idx] / tau
    z_s = np.asarray(z_s, np.float64)[idx] / tau
    p_t = np.exp(z_t) / np.exp(z_t).sum(axis=1, keepdims=True)
    p_s = np.exp(z_s) / np.exp(z_s).sum(axis=1, keepdims=True)

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + eps)

    n, k = p_t.shape
    inter = np.mean([1.0 - pearson(p_s[i], p_t[i]) for i in range(n)])
    intra = np.mean([1.0 - pearson(p_s[:, c], p_t[:, c]) for c in range(k)])
    return tau**2 * (beta * inter + gamma * intra)


@pytest.fixture
def logits(rng):
    z_t = rng.normal(scale=3.0, size=(B, 7)).astype("float32")
    z_s = rng.normal(size=(B, 7)).astype("float32")
    return z_t, z_s


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0), (0.0, 1.0, 2.0),
                                            (1.0, 0.0, 1.0)])
def test_dist_golden(logits, beta, gamma, tau):
    z_t, z_s = logits
    term = DIST(beta=beta, gamma=gamma, temperature=tau)
    term.build_term(View(kt(7)), View(kt(7)))
    got = float(term.compute(View(z_t), View(z_s)))
    assert got == pytest.approx(ref_dist(z_t, z_s, np.ones(B), beta, gamma, tau), rel=1e-5)


def test_dist_weights_count_like_copies_and_zero_removes(logits):
    z_t, z_s = logits
    w = np.array([2.0, 0.0, 1.0, 3.0, 1.0, 1.0], "float32")
    term = DIST(gamma=2.0, temperature=2.0)
    got = float(term.loss(View(z_t), View(z_s), sample_weight=w))
    assert got == pytest.approx(ref_dist(z_t, z_s, w, 1.0, 2.0, 2.0), rel=1e-5)
    keep = w > 0
    without = float(term.loss(View(z_t[keep]), View(z_s[keep]), sample_weight=w[keep]))
    assert got == pytest.approx(without, rel=1e-5)
    z_s2 = z_s.copy()
    z_s2[1] += 30.0 * np.arange(7)  # the weight-0 sample changes nothing
    assert float(term.loss(View(z_t), View(z_s2), sample_weight=w)) == pytest.approx(got, rel=1e-5)
    assert float(term.loss(View(z_t), View(z_s), sample_weight=np.zeros(B, "float32"))) == 0.0


def test_dist_zero_for_identical_and_invariant_to_shift(logits):
    z_t, _ = logits
    term = DIST(temperature=4.0)
    assert float(term.loss(View(z_t), View(z_t))) == pytest.approx(0.0, abs=1e-5)
    # A logit shift per sample leaves the softmax, hence the loss, unchanged.
    assert float(term.loss(View(z_t), View(z_t + 5.0))) == pytest.approx(0.0, abs=1e-5)


def test_dist_constant_predictions_are_finite(logits):
    z_t, _ = logits
    flat = tf.Variable(np.zeros((B, 7), "float32"))  # uniform student: constant vectors
    with tf.GradientTape() as tape:
        loss = DIST().loss(View(z_t), View(flat))
    g = np.asarray(tape.gradient(loss, flat))
    # Every correlation with a constant vector is 0: inter = intra = 1.
    assert float(loss) == pytest.approx(2.0, rel=1e-5)
    assert np.all(np.isfinite(g))


def test_dist_graph_mode_unknown_batch(logits):
    z_t, z_s = logits
    term = DIST(temperature=2.0)

    @tf.function(input_signature=[tf.TensorSpec((None, 7)), tf.TensorSpec((None, 7)),
                                  tf.TensorSpec((None,))])
    def fn(a, b, w):
        return term.loss(View(a), View(b), sample_weight=w)

    w = np.linspace(0.5, 1.5, B).astype("float32")
    eager = float(term.loss(View(z_t), View(z_s), sample_weight=w))
    assert float(fn(z_t, z_s, w)) == pytest.approx(eager, rel=1e-5)


def test_dist_validation():
    with pytest.raises(ValueError, match=r"DIST: `beta` must be a finite number >= 0"):
        DIST(beta=-1.0)
    with pytest.raises(ValueError, match=r"DIST: `gamma` must be a finite number >= 0"):
        DIST(gamma=float("nan"))
    with pytest.raises(ValueError, match=r"DIST: `temperature` must be a finite number > 0"):
        DIST(temperature=0.0)
    with pytest.raises(TypeError, match=r"DIST: `temperature` must be a number, got 'x'"):
        DIST(temperature="x")
    with pytest.raises(TypeError, match="DIST: `output` must be"):
        DIST(output=1.5)
    with pytest.raises(ValueError, match="DIST needs a teacher"):
        DIST().build_term(None, View(kt(5)))
    with pytest.raises(ValueError, match="teacher's logits have 4 classes but the student's have 5"):
        DIST().build_term(View(kt(4)), View(kt(5)))
    with pytest.raises(ValueError, match="DIST needs at least 2 classes"):
        DIST().build_term(View(kt(1)), View(kt(1)))
    with pytest.raises(ValueError, match="DIST expects the student's logits of shape"):
        DIST().build_term(View(kt(4, 4, 5)), View(kt(4, 4, 5)))


def test_dist_selects_an_output():
    rng = np.random.default_rng(3)
    z_t, z_s = rng.normal(size=(2, B, 5)).astype("float32")
    term = DIST(output="logits")
    teacher = View(z_t)
    student = View({"logits": z_s, "aux": np.zeros((B, 2), "float32")})
    term.build_term(View(kt(5)), View({"logits": kt(5), "aux": kt(2)}))
    assert float(term.loss(teacher, student)) == pytest.approx(
        ref_dist(z_t, z_s, np.ones(B), 1.0, 1.0, 1.0), rel=1e-5)
    assert DIST.from_config(term.get_config()).get_config() == term.get_config()


# ---------------------------------------------------------------- PKT
def ref_pkt(x_t, x_s, w, eps=1e-7):
    """The paper's PKT (authors' normalisation and eps) on the batch in which sample i
    appears w_i times (integer weights), the KL divergence of each row averaged over rows."""
    idx = np.repeat(np.arange(len(w)), np.asarray(w).astype(int))
    x_t = np.asarray(x_t, np.float64).reshape(len(x_t), -1)[idx]
    x_s = np.asarray(x_s, np.float64).reshape(len(x_s), -1)[idx]
    n = len(idx)

    def conditional(x):
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        k = np.empty((n, n))
        for i in range(n):
            for j in range(n):
                k[i, j] = (x[i] @ x[j] + 1.0) / 2.0
        return k / k.sum(axis=1, keepdims=True)

    p_t, p_s = conditional(x_t), conditional(x_s)
    rows = [sum(p_t[i, j] * np.log((p_t[i, j] + eps) / (p_s[i, j] + eps)) for j in range(n))
            for i in range(n)]
    return float(np.mean(rows))


def pkt_views(term, x_t, x_s):
    return View(None, {term.teacher_layer: x_t}), View(None, {term.student_layer: x_s})


def test_pkt_golden(rng):
    x_t = rng.normal(size=(B, 3, 3, 4)).astype("float32")
    x_s = rng.normal(size=(B, 2, 2, 3)).astype("float32") + 0.5
    term = PKT("sl", "tl")
    assert term.teacher_features == ("tl",) and term.student_features == ("sl",)
    term.build_term(View(kt(10), {"tl": kt(3, 3, 4)}), View(kt(10), {"sl": kt(2, 2, 3)}))
    got = float(term.compute(*pkt_views(term, x_t, x_s)))
    assert got == pytest.approx(ref_pkt(x_t, x_s, np.ones(B)), rel=1e-5)


def test_pkt_weights_count_like_copies_and_zero_removes(rng):
    x_t = rng.normal(size=(B, 9)).astype("float32")
    x_s = rng.normal(size=(B, 4)).astype("float32")
    w = np.array([2.0, 0.0, 1.0, 3.0, 1.0, 1.0], "float32")
    term = PKT("sl", "tl")
    got = float(term.loss(*pkt_views(term, x_t, x_s), sample_weight=w))
    assert got == pytest.approx(ref_pkt(x_t, x_s, w), rel=1e-5)
    keep = w > 0
    without = float(term.loss(*pkt_views(term, x_t[keep], x_s[keep]), sample_weight=w[keep]))
    assert got == pytest.approx(without, rel=1e-5)
    x_s2 = x_s.copy()
    x_s2[1] = -10.0 * x_s[0]
    assert float(term.loss(*pkt_views(term, x_t, x_s2), sample_weight=w)) == pytest.approx(got, rel=1e-5)
    assert float(term.loss(*pkt_views(term, x_t, x_s), sample_weight=np.zeros(B, "float32"))) == 0.0


def test_pkt_zero_for_identical_geometry_across_widths(rng):
    x = rng.normal(size=(B, 5)).astype("float32")
    term = PKT("sl", "tl")
    assert float(term.loss(*pkt_views(term, x, x))) == pytest.approx(0.0, abs=1e-6)
    # Same cosine similarities in another width: rotated, padded and rescaled per sample.
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    wide = (np.concatenate([x, np.zeros((B, 3), "float32")], 1) @ q).astype("float32")
    wide *= rng.uniform(0.5, 3.0, size=(B, 1)).astype("float32")
    assert float(term.loss(*pkt_views(term, x, wide))) == pytest.approx(0.0, abs=1e-6)


def test_pkt_zero_feature_is_finite(rng):
    x_t = rng.normal(size=(B, 5)).astype("float32")
    x_s = rng.normal(size=(B, 5)).astype("float32")
    x_s[2] = 0.0  # normalises to the zero vector, as in the authors' code
    sv = tf.Variable(x_s)
    term = PKT("sl", "tl")
    with tf.GradientTape() as tape:
        loss = term.loss(*pkt_views(term, x_t, sv))
    g = np.asarray(tape.gradient(loss, sv))
    assert float(loss) == pytest.approx(ref_pkt(x_t, x_s, np.ones(B)), rel=1e-5)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_pkt_graph_mode_unknown_batch(rng):
    x_t = rng.normal(size=(B, 6)).astype("float32")
    x_s = rng.normal(size=(B, 3)).astype("float32")
    term = PKT("sl", "tl")

    @tf.function(input_signature=[tf.TensorSpec((None, 6)), tf.TensorSpec((None, 3)),
                                  tf.TensorSpec((None,))])
    def fn(a, b, w):
        return term.loss(*pkt_views(term, a, b), sample_weight=w)

    w = np.linspace(0.5, 1.5, B).astype("float32")
    eager = float(term.loss(*pkt_views(term, x_t, x_s), sample_weight=w))
    assert float(fn(x_t, x_s, w)) == pytest.approx(eager, rel=1e-5)


def test_pkt_validation():
    with pytest.raises(TypeError, match="PKT: `teacher_layer` must be a layer name"):
        PKT("s", 3)
    with pytest.raises(TypeError, match="PKT: `student_layer` must be a layer name"):
        PKT("", "t")
    with pytest.raises(ValueError, match=r"PKT: `eps` must be a finite number > 0"):
        PKT("s", "t", eps=0.0)
    with pytest.raises(ValueError, match=r"PKT: `weight` must be a finite number >= 0"):
        PKT("s", "t", weight=-1.0)
    with pytest.raises(ValueError, match="PKT: the teacher feature 't' was not tapped"):
        PKT("s", "t").build_term(View(kt(3), {}), View(kt(3), {"s": kt(3)}))
    with pytest.raises(ValueError, match="PKT needs a teacher"):
        PKT("s", "t").build_term(None, View(kt(3), {"s": kt(3)}))
    with pytest.raises(ValueError, match=r"PKT: the student feature 's' has shape \(None,\)"):
        PKT("s", "t").build_term(View(kt(3), {"t": kt(3)}),
                                 View(kt(3), {"s": keras.KerasTensor((None,))}))
