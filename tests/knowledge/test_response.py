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


# ================================================================ logit standardisation,
# curriculum temperatures (schedule, CTKD's learnable one) and MLKD
import math  # noqa: E402

import tfkd  # noqa: E402
from tfkd.knowledge import MLKD  # noqa: E402


def ref_standardize(z):
    """Sun et al.'s `normalize`: (z - mean) / (std + 1e-7), PyTorch's (Bessel) std."""
    z = np.asarray(z, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


def ref_mlkd(z_t, z_s, temps, w=None, standardize=False, mask=True, normalize=True):
    """The authors' MLKD.py weak-view loss (kd + cc + bc), per-level masks as they apply them;
    `normalize`: bc divided by W / C and cc by (W / C)^2 (tfkd's default)."""
    z_t, z_s = np.asarray(z_t, np.float64), np.asarray(z_s, np.float64)
    w = np.ones(len(z_t)) if w is None else np.asarray(w, np.float64)
    keep = w > 0  # a sample of weight 0 leaves no trace
    z_t, z_s, w = z_t[keep], z_s[keep], w[keep]
    total_w, classes = w.sum(), z_t.shape[1]
    q = np_softmax(z_t)
    conf = q.max(1)
    f_s = (w * (conf <= np.percentile(conf, 50))).sum() / total_w
    class_conf = (w[:, None] * q).sum(0)
    f_c = (class_conf <= np.percentile(class_conf, 50)).mean()
    if not mask:
        f_s = f_c = 1.0
    zi_t, zi_s = (ref_standardize(z_t), ref_standardize(z_s)) if standardize else (z_t, z_s)
    total = 0.0
    for T in temps:
        kd = (w * ref_soft_targets(zi_t, zi_s, T)).sum() / total_w
        p_t, p_s = np_softmax(z_t / T), np_softmax(z_s / T)
        bc = (np.outer(w, w) * (p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / total_w
        cc = (((p_t.T * w) @ p_t - (p_s.T * w) @ p_s) ** 2).sum() / classes
        if normalize:
            bc, cc = bc / (total_w / classes), cc / (total_w / classes) ** 2
        total += f_s * (kd + bc) + f_c * cc
    return total


class _Optimizer:
    def __init__(self, step):
        self.iterations = tf.Variable(step, dtype="int64")


class _Owner:
    """A trainer stand-in: `at_step` reads `owner.optimizer.iterations`."""

    def __init__(self, step=0):
        self.name = "owner"
        self.optimizer = _Optimizer(step)


def owned(term, step):
    owner = _Owner(step)
    term.claim(owner)
    return owner  # keep it alive: the term holds a weak reference


# ---------------------------------------------------------------- standardize (Sun et al.)
@pytest.mark.parametrize("T", [2.0, 4.0])
def test_soft_targets_standardize_golden(logits, T):
    z_t, z_s, _ = logits
    got = SoftTargets(temperature=T, standardize=True).compute(View(z_t), View(z_s))
    want = ref_soft_targets(ref_standardize(z_t), ref_standardize(z_s), T)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_standardize_ignores_the_logits_offset_and_scale(logits):
    z_t, z_s, y = logits
    for term, args in ((SoftTargets(standardize=True), ()), (DecoupledKD(standardize=True), (y,))):
        base = np.asarray(term.compute(View(z_t), View(z_s), *args))
        moved = np.asarray(term.compute(View(z_t), View(3.0 * z_s + 5.0), *args))
        np.testing.assert_allclose(moved, base, rtol=1e-4, atol=1e-5)
    # Without it the scale matters.
    assert not np.allclose(SoftTargets().compute(View(z_t), View(3.0 * z_s)),
                           SoftTargets().compute(View(z_t), View(z_s)))


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (9.0, 81.0, 2.0)])
def test_dkd_standardize_golden(logits, alpha, beta, T):
    z_t, z_s, y = logits
    term = DecoupledKD(alpha=alpha, beta=beta, temperature=T, standardize=True)
    got = term.compute(View(z_t), View(z_s), y_true=y)
    want = ref_dkd(ref_standardize(z_t), ref_standardize(z_s), y, alpha, beta, T)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_standardize_of_equal_logits_keeps_finite_gradients(logits):
    z_t, _, y = logits
    flat = tf.Variable(np.zeros((B, K), "float32"))
    for term in (SoftTargets(standardize=True), DecoupledKD(standardize=True),
                 MLKD(standardize=True)):
        with tf.GradientTape() as tape:
            loss = term.loss(View(z_t), View(flat), y)
        grad = tape.gradient(loss, flat)
        assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("cls", [SoftTargets, DecoupledKD, MLKD])
@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_standardize_must_be_a_bool(cls, bad):
    with pytest.raises(TypeError, match=f"{cls.__name__}: `standardize` must be True or False"):
        cls(standardize=bad)


def test_standardize_needs_two_classes():
    with pytest.raises(ValueError, match="standardize=True needs at least 2 classes"):
        SoftTargets(standardize=True).build_term(sym(1), sym(1))


def test_standardize_specs():
    term = tfkd.knowledge.get("soft_targets:temperature=4,standardize=True")
    assert term.standardize is True and term.temperature == 4.0
    assert tfkd.knowledge.get("dkd:standardize=True").get_config()["standardize"] is True
    assert tfkd.knowledge.get("kd").standardize is False


# ---------------------------------------------------------------- scheduled temperature
def poly(start=8.0, end=2.0, steps=10):
    return keras.optimizers.schedules.PolynomialDecay(start, steps, end_learning_rate=end)


@pytest.mark.parametrize("step,T", [(0, 8.0), (5, 5.0), (50, 2.0)])
def test_scheduled_temperature_follows_the_trainer_step(logits, step, T):
    z_t, z_s, y = logits
    soft, dkd = SoftTargets(temperature=poly()), DecoupledKD(temperature=poly(), beta=2.0)
    owners = owned(soft, step), owned(dkd, step)
    assert float(soft.current_temperature()) == pytest.approx(T)
    np.testing.assert_allclose(soft.compute(View(z_t), View(z_s)),
                               ref_soft_targets(z_t, z_s, T), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dkd.compute(View(z_t), View(z_s), y),
                               ref_dkd(z_t, z_s, y, 1.0, 2.0, T), rtol=1e-5, atol=1e-6)
    del owners


def test_scheduled_temperature_config_round_trip(logits):
    z_t, z_s, _ = logits
    term = SoftTargets(temperature=poly(), standardize=True, weight=0.5, name="ctkd_fixed")
    config = keras.saving.serialize_keras_object(term)
    restored = keras.saving.deserialize_keras_object(config)
    assert restored.get_config() == term.get_config()
    assert isinstance(restored.temperature, keras.optimizers.schedules.PolynomialDecay)
    owners = owned(term, 5), owned(restored, 5)
    np.testing.assert_allclose(restored.compute(View(z_t), View(z_s)),
                               term.compute(View(z_t), View(z_s)), rtol=1e-6)
    assert float(restored.current_temperature()) == pytest.approx(5.0)
    del owners


def test_scheduled_temperature_traces_with_xla(logits):
    z_t, z_s, _ = logits
    term = SoftTargets(temperature=poly())
    owner = owned(term, 5)
    run = tf.function(lambda t, s: term.loss(View(t), View(s)), jit_compile=True)
    assert float(run(z_t, z_s)) == pytest.approx(float(np.mean(ref_soft_targets(z_t, z_s, 5.0))),
                                                 rel=1e-5)
    owner.optimizer.iterations.assign(10)  # the same trace reads the new step
    assert float(run(z_t, z_s)) == pytest.approx(float(np.mean(ref_soft_targets(z_t, z_s, 2.0))),
                                                 rel=1e-5)


@pytest.mark.parametrize("bad,error,match", [
    (keras.optimizers.schedules.PolynomialDecay(0.0, 10, 4.0), ValueError, "stay > 0.*step 0"),
    ("hot", TypeError, "`temperature` must be a number, got 'hot'.*'learnable'"),
    (lambda step: 4.0, TypeError, "callable"),
    ([4.0], TypeError, "`temperature` must be a number"),
])
def test_bad_temperature_kinds(bad, error, match):
    for cls in (SoftTargets, DecoupledKD):
        with pytest.raises(error, match=match):
            cls(temperature=bad)


def test_a_warmup_is_no_temperature():
    with pytest.raises(ValueError, match="stay > 0"):
        tfkd.knowledge.get("soft_targets:temperature=warmup(4.0,100)")


# ---------------------------------------------------------------- CTKD's learnable temperature
def built(term, width=K):
    term.build_term(sym(width), sym(width))
    return term


def test_ctkd_curriculum_is_a_half_cosine_from_0_to_1():
    term = SoftTargets(temperature="learnable", curriculum_steps=10)
    got = [float(term._curriculum(s)) for s in (0, 5, 10, 20)]
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert float(term._curriculum(2)) == pytest.approx((1 - math.cos(math.pi * 0.2)) / 2)


def test_learnable_temperature_is_a_bounded_trainable_scalar(logits):
    z_t, z_s, y = logits
    for term in (SoftTargets(temperature="learnable", initial_temperature=6.0,
                             temperature_range=(2.0, 12.0)),
                 DecoupledKD(temperature="Learnable", initial_temperature=6.0,
                             temperature_range=(2.0, 12.0))):
        built(term)
        assert term.temperature == "learnable"
        assert [w.name for w in term.trainable_weights] == ["temperature_logit"]
        assert float(term.current_temperature()) == pytest.approx(6.0, rel=1e-6)
        # Far beyond the bounds the sigmoid saturates inside them.
        term.temperature_logit.assign(50.0)
        assert float(term.current_temperature()) == pytest.approx(12.0)
        term.temperature_logit.assign(-50.0)
        assert float(term.current_temperature()) == pytest.approx(2.0)
    term = built(SoftTargets(temperature="learnable"))
    np.testing.assert_allclose(term.compute(View(z_t), View(z_s)),
                               ref_soft_targets(z_t, z_s, 4.0), rtol=1e-5, atol=1e-6)
    term = built(DecoupledKD(temperature="learnable", beta=2.0))
    np.testing.assert_allclose(term.compute(View(z_t), View(z_s), y),
                               ref_dkd(z_t, z_s, y, 1.0, 2.0, 4.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step,lam", [(0, 0.0), (5, 0.5), (10, 1.0), (40, 1.0)])
@pytest.mark.parametrize("cls", [SoftTargets, DecoupledKD])
def test_learnable_temperature_gradient_is_reversed_by_the_curriculum(logits, cls, step, lam):
    z_t, z_s, y = logits
    term = built(cls(temperature="learnable", curriculum_steps=10, initial_temperature=3.0))
    owner = owned(term, step)
    zs = tf.Variable(z_s)
    with tf.GradientTape() as tape:
        loss = term.loss(View(z_t), View(zs), y)
    g_r, g_s = tape.gradient(loss, [term.temperature_logit.value, zs])

    def ref_loss(r):  # float64, T as a function of the raw variable, no reversal
        T = 1.0 + 20.0 / (1.0 + np.exp(-r))
        per = (ref_soft_targets(z_t, z_s, T) if cls is SoftTargets
               else ref_dkd(z_t, z_s, y, 1.0, 8.0, T))
        return per.mean()

    r, h = float(term.temperature_logit.numpy()), 1e-5
    plain = (ref_loss(r + h) - ref_loss(r - h)) / (2 * h)
    assert abs(plain) > 1e-3  # the test means something
    np.testing.assert_allclose(float(g_r), -lam * plain, rtol=2e-3, atol=1e-6)
    # The student's gradient is the ordinary one at the current T.
    fixed = cls(temperature=float(term.current_temperature()))
    with tf.GradientTape() as tape:
        loss = fixed.loss(View(z_t), View(zs), y)
    np.testing.assert_allclose(g_s, tape.gradient(loss, zs), rtol=1e-4, atol=1e-7)
    del owner


def test_learnable_temperature_config_round_trip_and_spec(logits):
    z_t, z_s, _ = logits
    term = tfkd.knowledge.get("soft_targets:temperature=learnable,initial_temperature=5,"
                              "temperature_range=(1,11),curriculum_steps=300,standardize=True")
    built(term).temperature_logit.assign(0.7)
    config = term.get_config()
    assert config["temperature"] == "learnable" and config["temperature_range"] == [1.0, 11.0]
    assert config["curriculum_steps"] == 300.0 and config["initial_temperature"] == 5.0
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert restored.get_config() == config
    built(restored).set_weights(term.get_weights())
    assert float(restored.current_temperature()) == pytest.approx(1 + 10 / (1 + math.exp(-0.7)))
    np.testing.assert_allclose(restored.compute(View(z_t), View(z_s)),
                               term.compute(View(z_t), View(z_s)), rtol=1e-6)


def test_learnable_temperature_traces_with_xla_once_built(logits):
    z_t, z_s, _ = logits
    term = SoftTargets(temperature="learnable")
    with pytest.raises(ValueError, match="call `build_term` before tracing"):
        tf.function(lambda t, s: term.loss(View(t), View(s)))(z_t, z_s)
    built(term)
    run = tf.function(lambda t, s: term.loss(View(t), View(s)), jit_compile=True)
    assert float(run(z_t, z_s)) == pytest.approx(float(np.mean(ref_soft_targets(z_t, z_s, 4.0))),
                                                 rel=1e-5)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(temperature_range=(5.0, 1.0)), ValueError, "0 < low < high"),
    (dict(temperature_range=(0.0, 3.0)), ValueError, "0 < low < high"),
    (dict(temperature_range=(1.0, float("inf"))), ValueError, "finite"),
    (dict(temperature_range=(1.0,)), TypeError, "pair"),
    (dict(temperature_range=("a", 2.0)), TypeError, "pair"),
    (dict(initial_temperature=30.0), ValueError, "strictly inside temperature_range"),
    (dict(initial_temperature=1.0), ValueError, "strictly inside temperature_range"),
    (dict(initial_temperature=-1.0), ValueError, "initial_temperature.*> 0"),
    (dict(curriculum_steps=0), ValueError, "curriculum_steps.*an integer >= 1"),
    (dict(curriculum_steps=2.5), ValueError, "curriculum_steps.*an integer >= 1"),
])
@pytest.mark.parametrize("cls", [SoftTargets, DecoupledKD])
def test_learnable_temperature_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=f"{cls.__name__}: .*{match}"):
        cls(temperature="learnable", **kwargs)


def test_learnable_temperature_trains_with_the_distiller():
    """At step 0 lambda = 0: the temperature holds; afterwards the optimizer moves it."""
    from tiny_models import convnet

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=8)
    teacher, student = convnet(width=4, seed=1, name="t"), convnet(width=4, seed=2, name="s")
    term = SoftTargets(temperature="learnable", curriculum_steps=1)
    distiller = tfkd.Distiller(teacher, student, knowledge=[term], student_loss_weight=0.0)
    distiller.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=False)
    assert any(w is term.temperature_logit for w in distiller.trainable_weights)
    start = float(term.temperature_logit.numpy())
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert float(term.temperature_logit.numpy()) == start
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert float(term.temperature_logit.numpy()) != start


# ---------------------------------------------------------------- MLKD (Jin et al.)
@pytest.mark.parametrize("temps", [(2.0, 3.0, 4.0, 5.0, 6.0), (2.0, 3.0, 5.0, 2.0, 6.0), (1.0,)])
@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_mlkd_golden(logits, temps, standardize, mask, normalize):
    z_t, z_s, _ = logits
    term = MLKD(temperatures=temps, standardize=standardize, confidence_mask=mask,
                normalize_levels=normalize)
    got = float(term.compute(View(z_t), View(z_s)))
    want = ref_mlkd(z_t, z_s, temps, None, standardize, mask, normalize)
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("batch", [5, 6])
def test_mlkd_normalized_levels_do_not_grow_with_the_batch(rng, batch):
    # Every sample repeated 4 times: the same data, a 4x batch. The reference's batch level
    # grows 4x and its class level 16x; normalised, the loss is the same.
    z_t = rng.normal(scale=3.0, size=(batch, K)).astype("float32")
    z_s = rng.normal(scale=3.0, size=(batch, K)).astype("float32")
    big_t, big_s = np.tile(z_t, (4, 1)), np.tile(z_s, (4, 1))
    norm, ref = MLKD(), MLKD(normalize_levels=False)
    small = float(norm.compute(View(z_t), View(z_s)))
    assert float(norm.compute(View(big_t), View(big_s))) == pytest.approx(small, rel=1e-5)
    grown = float(ref.compute(View(big_t), View(big_s))) - float(
        ref.compute(View(z_t), View(z_s)))
    assert grown > 1e-3 * small


@pytest.mark.parametrize("batch", [5, 6])  # odd / even: the median is a sample / a mean of two
def test_mlkd_golden_with_sample_weights(rng, batch):
    z_t = rng.normal(scale=3.0, size=(batch + 2, K)).astype("float32")
    z_s = rng.normal(scale=3.0, size=(batch + 2, K)).astype("float32")
    w = np.concatenate([rng.uniform(0.5, 2.0, size=batch), [0.0, 0.0]]).astype("float32")
    term = MLKD(standardize=True)
    got = float(term.loss(View(z_t), View(z_s), sample_weight=w))
    assert got == pytest.approx(ref_mlkd(z_t, z_s, term.temperatures, w, True), rel=1e-5)
    # The reference's masks keep the less confident half: at T = 1 and even n exactly half.
    conf = np_softmax(z_t[:batch]).max(1)
    assert (conf <= np.percentile(conf, 50)).sum() == (batch + 1) // 2


def test_mlkd_is_zero_when_the_student_matches_and_reaches_the_student(logits):
    z_t, z_s, _ = logits
    assert float(MLKD().loss(View(z_t), View(z_t))) == pytest.approx(0.0, abs=1e-6)
    zs = tf.Variable(z_s)
    with tf.GradientTape() as tape:
        loss = MLKD().loss(View(tf.stop_gradient(z_t)), View(zs))
    grad = tape.gradient(loss, zs)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_mlkd_spec_and_config():
    term = tfkd.knowledge.get("mlkd")
    assert isinstance(term, MLKD) and term.name == "mlkd"
    assert term.temperatures == [2.0, 3.0, 4.0, 5.0, 6.0] and term.standardize is False
    term = tfkd.knowledge.get("mlkd:temperatures=[2,3,5,2,6],standardize=True,weight=9")
    assert term.temperatures == [2.0, 3.0, 5.0, 2.0, 6.0] and term.weight == 9.0
    again = MLKD.from_config(term.get_config())
    assert again.get_config() == term.get_config()
    assert tfkd.knowledge.get("multi_level_kd:confidence_mask=False").confidence_mask is False
    assert term.normalize_levels is True
    assert tfkd.knowledge.get("mlkd:normalize_levels=False").normalize_levels is False
    assert MLKD(temperatures=4).temperatures == [4.0]


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(temperatures=[]), ValueError, "non-empty list"),
    (dict(temperatures="hot"), ValueError, "non-empty list"),
    (dict(temperatures=[2.0, 0.0]), ValueError, "temperatures.*> 0"),
    (dict(temperatures=[2.0, "x"]), TypeError, "temperatures.*must be a number"),
    (dict(confidence_mask="no"), TypeError, "confidence_mask.*True or False"),
    (dict(normalize_levels=1), TypeError, "normalize_levels.*True or False"),
    (dict(weight=-1.0), ValueError, "weight.*>= 0"),
])
def test_mlkd_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=f"MLKD: .*{match}"):
        MLKD(**kwargs)


def test_mlkd_shape_checks():
    with pytest.raises(ValueError, match="teacher's logits have 10 classes"):
        MLKD().build_term(sym(10), sym(5))
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLKD().build_term(sym(1), sym(1))
    with pytest.raises(ValueError, match="needs a teacher"):
        MLKD().build_term(None, sym(4))
