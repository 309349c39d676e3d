"""Response-based terms: golden values against NumPy, sample weights, validation."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_numpy import keras_weighted, np_kl, np_log_softmax, np_softmax
from tfkd.knowledge import DecoupledKD, LabelSmoothedKD, SoftTargets, TeacherFree, View

B, K = 6, 7


@pytest.fixture
def logits(rng):
    z_t = rng.normal(scale=3.0, size=(B, K)).astype("float32")
    z_s = rng.normal(scale=3.0, size=(B, K)).astype("float32")
    y = rng.integers(0, K, size=(B,))
    return z_t, z_s, y


def sym(width, features=None):
    return View(keras.KerasTensor((None, width)), features)


# ---------------------------------------------------------------- NumPy references (paper)
def ref_soft_targets(z_t, z_s, T):
    return T * T * np_kl(np_softmax(z_t / T), np_softmax(z_s / T))


def ref_dkd(z_t, z_s, y, alpha, beta, T):
    out = []
    for zt, zs, c in zip(z_t, z_s, y):
        pt, ps = np_softmax(zt / T), np_softmax(zs / T)
        bt, bs = np.array([pt[c], 1 - pt[c]]), np.array([ps[c], 1 - ps[c]])
        tckd = np_kl(bt, bs)
        others = [k for k in range(len(zt)) if k != c]
        nt = np_softmax(zt[others] / T)
        ns = np_softmax(zs[others] / T)
        nckd = np_kl(nt, ns)
        out.append(T * T * (alpha * tckd + beta * nckd))
    return np.array(out)


def ref_teacher_free(z_s, y, a, tau):
    n = z_s.shape[-1]
    pd = np.full(z_s.shape, (1 - a) / (n - 1))
    pd[np.arange(len(y)), y] = a
    return np_kl(np_softmax(pd / tau), np_softmax(z_s))


def ref_label_smoothed(z_t, z_s, y, eps, alpha, T):
    n = z_s.shape[-1]
    onehot = np.eye(n)[y]
    smooth = (1 - eps) * onehot + eps / n
    ce = -(smooth * np_log_softmax(z_s)).sum(-1)
    return (1 - alpha) * ce + alpha * ref_soft_targets(z_t, z_s, T)


# ---------------------------------------------------------------- golden values
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_targets_golden(logits, T):
    z_t, z_s, _ = logits
    got = SoftTargets(temperature=T).compute(View(z_t), View(z_s))
    np.testing.assert_allclose(got, ref_soft_targets(z_t, z_s, T), rtol=1e-5, atol=1e-6)


def test_soft_targets_is_zero_when_student_matches(logits):
    z_t, _, _ = logits
    assert float(SoftTargets().loss(View(z_t), View(z_t))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_golden(logits, alpha, beta, T):
    z_t, z_s, y = logits
    term = DecoupledKD(alpha=alpha, beta=beta, temperature=T)
    got = term.compute(View(z_t), View(z_s), y_true=y)
    np.testing.assert_allclose(got, ref_dkd(z_t, z_s, y, alpha, beta, T), rtol=1e-5, atol=1e-6)


def test_dkd_with_alpha_beta_one_equals_kd_up_to_cross_terms(logits):
    # Zhao et al. eq. (1): KD = TCKD + (1 - p_t^c) NCKD; with a matching target probability
    # (identical logits) both vanish.
    z_t, _, y = logits
    assert float(DecoupledKD().loss(View(z_t), View(z_t), y)) == pytest.approx(0.0, abs=1e-5)


def test_teacher_free_golden(logits):
    _, z_s, y = logits
    term = TeacherFree(correct_prob=0.9, temperature=20.0)
    got = term.compute(None, View(z_s), y_true=y)
    np.testing.assert_allclose(got, ref_teacher_free(z_s, y, 0.9, 20.0), rtol=1e-5, atol=1e-6)
    # A sharp virtual teacher (tau small) is nearly the one-hot label: loss ~ CE(y, p_s).
    sharp = TeacherFree(correct_prob=1.0, temperature=0.01).compute(None, View(z_s), y_true=y)
    np.testing.assert_allclose(sharp, -np_log_softmax(z_s)[np.arange(B), y], rtol=1e-4)


def test_label_smoothed_kd_golden(logits):
    z_t, z_s, y = logits
    term = LabelSmoothedKD(smoothing=0.1, alpha=0.3, temperature=2.0)
    got = term.compute(View(z_t), View(z_s), y_true=y)
    np.testing.assert_allclose(got, ref_label_smoothed(z_t, z_s, y, 0.1, 0.3, 2.0), rtol=1e-5)


def test_label_smoothed_kd_matches_keras_cce_with_label_smoothing(logits):
    z_t, z_s, y = logits
    term = LabelSmoothedKD(smoothing=0.2, alpha=0.0)
    cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    np.testing.assert_allclose(
        float(term.loss(View(z_t), View(z_s), np.eye(K)[y])), float(cce(np.eye(K)[y], z_s)),
        rtol=1e-5,
    )


@pytest.mark.parametrize("make_labels", [
    lambda y: y,  # (B,) ints
    lambda y: y[:, None],  # (B, 1) ints
    lambda y: np.eye(K, dtype="float32")[y],  # one-hot
])
@pytest.mark.parametrize("cls", [DecoupledKD, TeacherFree, LabelSmoothedKD])
def test_label_formats_agree(logits, make_labels, cls):
    z_t, z_s, y = logits
    term = cls()
    expected = term.compute(View(z_t), View(z_s), y_true=y)
    got = term.compute(View(z_t), View(z_s), y_true=make_labels(y))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# ---------------------------------------------------------------- sample weights
@pytest.mark.parametrize("cls", [SoftTargets, DecoupledKD, TeacherFree, LabelSmoothedKD])
def test_sample_weights(logits, cls):
    z_t, z_s, y = logits
    term = cls()
    per_sample = np.asarray(term.compute(View(z_t), View(z_s), y_true=y))
    w = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], "float32")
    got = float(term.loss(View(z_t), View(z_s), y, sample_weight=w))
    assert got == pytest.approx(keras_weighted(per_sample, w), rel=1e-5)
    # A zero weight removes the sample: changing its logits changes nothing.
    z_s2 = z_s.copy()
    z_s2[1] += 100.0
    assert float(term.loss(View(z_t), View(z_s2), y, sample_weight=w)) == pytest.approx(got, rel=1e-6)
    # (B, 1) weights are accepted like (B,).
    assert float(term.loss(View(z_t), View(z_s), y, sample_weight=w[:, None])) == pytest.approx(got)


# ---------------------------------------------------------------- multi-output selection
def test_output_selector_picks_the_same_output_on_both_sides(logits):
    z_t, z_s, _ = logits
    junk = np.zeros((B, 3), "float32")
    term = SoftTargets(output="logits")
    t = View({"logits": z_t, "box": junk})
    s = View({"logits": z_s, "box": junk})
    np.testing.assert_allclose(term.compute(t, s), SoftTargets().compute(View(z_t), View(z_s)),
                               rtol=1e-6)
    by_index = SoftTargets(output=1).compute(View([junk, z_t]), View([junk, z_s]))
    np.testing.assert_allclose(by_index, SoftTargets().compute(View(z_t), View(z_s)), rtol=1e-6)
    with pytest.raises(ValueError, match="2 outputs"):
        SoftTargets().build_term(View({"a": keras.KerasTensor((None, 3)), "b": keras.KerasTensor((None, 3))}),
                                 View({"a": keras.KerasTensor((None, 3)), "b": keras.KerasTensor((None, 3))}))


def test_mixed_precision_inputs_give_float32_loss(logits):
    z_t, z_s, y = logits
    loss = SoftTargets().loss(View(tf.constant(z_t, tf.float16)), View(tf.constant(z_s, tf.float16)))
    assert loss.dtype == tf.float32


def test_gradient_reaches_student_logits(logits):
    z_t, z_s, y = logits
    zs = tf.Variable(z_s)
    for term in (SoftTargets(), DecoupledKD(), TeacherFree(), LabelSmoothedKD()):
        with tf.GradientTape() as tape:
            loss = term.loss(View(tf.stop_gradient(z_t)), View(zs), y)
        grad = tape.gradient(loss, zs)
        assert grad is not None and np.all(np.isfinite(grad)) and np.any(grad != 0)
        assert term.trainable_weights == []


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("cls", [SoftTargets, DecoupledKD, TeacherFree, LabelSmoothedKD])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature(cls, temperature):
    with pytest.raises(ValueError, match="temperature.*> 0"):
        cls(temperature=temperature)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=-1.0), "alpha.*>= 0"),
    (dict(beta=-0.1), "beta.*>= 0"),
    (dict(weight=-2.0), "weight.*>= 0"),
])
def test_dkd_negative_coefficients(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecoupledKD(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(smoothing=1.5), "smoothing.*\\[0, 1\\]"),
    (dict(alpha=-0.1), "alpha.*\\[0, 1\\]"),
])
def test_label_smoothed_kd_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelSmoothedKD(**kwargs)


@pytest.mark.parametrize("p", [0.0, 1.5, -0.2])
def test_teacher_free_correct_prob_range(p):
    with pytest.raises(ValueError, match="correct_prob.*\\(0, 1\\]"):
        TeacherFree(correct_prob=p)


def test_output_selector_type():
    with pytest.raises(TypeError, match="output"):
        SoftTargets(output=1.5)


def test_width_mismatch_names_both_widths():
    with pytest.raises(ValueError, match="teacher's logits have 10 classes but the student's have 5"):
        SoftTargets().build_term(sym(10), sym(5))
    with pytest.raises(ValueError, match="10 classes.*5"):
        LabelSmoothedKD().build_term(sym(10), sym(5))


def test_logits_must_be_rank_2():
    with pytest.raises(ValueError, match="\\(batch, classes\\)"):
        SoftTargets().build_term(View(keras.KerasTensor((None, 4, 10))), sym(10))


def test_dkd_needs_three_classes():
    with pytest.raises(ValueError, match="at least 3 classes.*2"):
        DecoupledKD().build_term(sym(2), sym(2))
    with pytest.raises(ValueError, match="at least 3 classes"):
        DecoupledKD().compute(View(np.zeros((2, 2), "float32")), View(np.zeros((2, 2), "float32")),
                              y_true=np.array([0, 1]))
    DecoupledKD().build_term(sym(3), sym(3))


def test_missing_teacher():
    with pytest.raises(ValueError, match="needs a teacher"):
        SoftTargets().build_term(None, sym(10))
    TeacherFree().build_term(None, sym(10))  # teacher-free: fine
    assert TeacherFree.requires_teacher is False and SoftTargets.requires_teacher is True


@pytest.mark.parametrize("cls", [DecoupledKD, TeacherFree, LabelSmoothedKD])
def test_missing_labels(logits, cls):
    z_t, z_s, _ = logits
    assert cls.requires_labels
    with pytest.raises(ValueError, match="needs the ground-truth labels"):
        cls().loss(View(z_t), View(z_s), y_true=None)
