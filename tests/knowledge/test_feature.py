"""Feature-based terms: golden values against NumPy, adapters, resizing, validation."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_numpy import keras_weighted, np_kl, np_resize_bilinear, np_softmax
from tfkd.knowledge import AttentionTransfer, FeatureNormalizedKD, Hint, View

B = 3


def kt(*shape):
    return keras.KerasTensor((None,) + shape)


def sym(outputs=None, **features):
    return View(outputs if outputs is not None else kt(10), features)


def built_hint(t_shape, s_shape, **kwargs):
    term = Hint("s", "t", **kwargs)
    term.build_term(sym(t=kt(*t_shape)), sym(s=kt(*s_shape)))
    return term


# ---------------------------------------------------------------- Hint
def test_hint_golden_with_adapter_and_resize(rng):
    term = built_hint((8, 8, 6), (4, 4, 3))
    assert isinstance(term.adapter, keras.layers.Conv2D)
    kernel, bias = (np.asarray(v) for v in term.adapter.weights)
    assert kernel.shape == (1, 1, 3, 6)
    bias = rng.normal(size=bias.shape).astype("float32")
    term.adapter.bias.assign(bias)
    f_t = rng.normal(size=(B, 8, 8, 6)).astype("float32")
    f_s = rng.normal(size=(B, 4, 4, 3)).astype("float32")
    got = term.compute(View(None, {"t": f_t}), View(None, {"s": f_s}))
    projected = np.einsum("bhwc,cd->bhwd", f_s.astype(np.float64), kernel[0, 0]) + bias
    expected = ((f_t - np_resize_bilinear(projected, (8, 8))) ** 2).reshape(B, -1).mean(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_hint_non_integer_resize_and_no_adapter(rng):
    term = built_hint((7, 5, 4), (3, 4, 4))
    assert term.adapter is None  # "auto" with equal channels
    f_t = rng.normal(size=(B, 7, 5, 4)).astype("float32")
    f_s = rng.normal(size=(B, 3, 4, 4)).astype("float32")
    got = term.compute(View(None, {"t": f_t}), View(None, {"s": f_s}))
    expected = ((f_t - np_resize_bilinear(f_s, (7, 5))) ** 2).reshape(B, -1).mean(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_hint_same_shapes_is_plain_mse(rng):
    term = built_hint((4, 4, 2), (4, 4, 2), adapter=None)
    f_t, f_s = rng.normal(size=(2, B, 4, 4, 2)).astype("float32")
    got = term.compute(View(None, {"t": f_t}), View(None, {"s": f_s}))
    np.testing.assert_allclose(got, ((f_t - f_s) ** 2).reshape(B, -1).mean(-1), rtol=1e-5)


def test_hint_adapter_modes():
    assert built_hint((4, 4, 8), (4, 4, 8)).adapter is None
    assert isinstance(built_hint((4, 4, 8), (4, 4, 8), adapter="conv").adapter, keras.layers.Conv2D)
    dense = built_hint((32,), (16,))
    assert isinstance(dense.adapter, keras.layers.Dense)
    assert tuple(dense.adapter.kernel.shape) == (16, 32)
    seq = built_hint((5, 32), (5, 16))
    assert isinstance(seq.adapter, keras.layers.Dense)
    assert dense.adapter.dtype_policy.compute_dtype == "float32"


def test_hint_rank2_golden(rng):
    term = built_hint((6,), (4,))
    kernel, bias = (np.asarray(v) for v in term.adapter.weights)
    f_t = rng.normal(size=(B, 6)).astype("float32")
    f_s = rng.normal(size=(B, 4)).astype("float32")
    got = term.compute(View(None, {"t": f_t}), View(None, {"s": f_s}))
    np.testing.assert_allclose(got, ((f_t - (f_s @ kernel + bias)) ** 2).mean(-1), rtol=1e-5)


def test_hint_gradients_reach_student_and_adapter_only(rng):
    term = built_hint((8, 8, 6), (4, 4, 3))
    assert {id(v) for v in term.trainable_weights} == {id(v) for v in term.adapter.trainable_weights}
    f_s = tf.Variable(rng.normal(size=(B, 4, 4, 3)).astype("float32"))
    f_t = tf.Variable(rng.normal(size=(B, 8, 8, 6)).astype("float32"))
    with tf.GradientTape() as tape:
        # The Distiller stop-gradients the teacher view; the term must not need more.
        loss = term.loss(View(None, {"t": tf.stop_gradient(f_t)}), View(None, {"s": f_s}))
    grads = tape.gradient(loss, [f_s, f_t] + term.trainable_weights)
    assert grads[0] is not None and np.any(np.asarray(grads[0]) != 0)
    assert grads[1] is None
    assert all(g is not None and np.any(np.asarray(g) != 0) for g in grads[2:])


def test_hint_sample_weights(rng):
    term = built_hint((4, 4, 2), (4, 4, 2))
    f_t, f_s = rng.normal(size=(2, B, 4, 4, 2)).astype("float32")
    per = np.asarray(term.compute(View(None, {"t": f_t}), View(None, {"s": f_s})))
    w = np.array([0.0, 1.0, 2.5], "float32")
    got = float(term.loss(View(None, {"t": f_t}), View(None, {"s": f_s}), sample_weight=w))
    assert got == pytest.approx(keras_weighted(per, w), rel=1e-5)


def test_hint_validation():
    with pytest.raises(ValueError, match="incompatible feature ranks.*4-D.*2-D"):
        built_hint((64,), (8, 8, 16))
    with pytest.raises(ValueError, match="16 channels.*32.*adapter=None"):
        built_hint((8, 8, 32), (8, 8, 16), adapter=None)
    with pytest.raises(ValueError, match="adapter.*'auto'"):
        Hint("s", "t", adapter="dense")
    with pytest.raises(TypeError, match="layer name"):
        Hint(None, "t")
    with pytest.raises(ValueError, match="weight.*>= 0"):
        Hint("s", "t", weight=-1)
    with pytest.raises(ValueError, match="feature 'nope' was not tapped.*available: \\['t'\\]"):
        Hint("s", "nope").build_term(sym(t=kt(4)), sym(s=kt(4)))
    assert Hint("s", "t").teacher_features == ("t",) and Hint("s", "t").student_features == ("s",)


def test_hint_in_graph_mode_with_unknown_spatial_size(rng):
    term = Hint("s", "t")
    term.build_term(sym(t=kt(None, None, 6)), sym(s=kt(None, None, 3)))

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 6)),
                                  tf.TensorSpec((None, None, None, 3))])
    def fn(t, s):
        return term.loss(View(None, {"t": t}), View(None, {"s": s}))

    f_t = rng.normal(size=(B, 8, 8, 6)).astype("float32")
    f_s = rng.normal(size=(B, 4, 4, 3)).astype("float32")
    eager = term.loss(View(None, {"t": f_t}), View(None, {"s": f_s}))
    np.testing.assert_allclose(fn(f_t, f_s), eager, rtol=1e-5)


# ---------------------------------------------------------------- AttentionTransfer
def np_attention(x, p):
    return (np.abs(np.asarray(x, np.float64)) ** p).mean(-1, keepdims=True)


def np_at_normalise(a):
    a = a.reshape(a.shape[0], -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_attention_transfer_golden_two_pairs(rng, p):
    term = AttentionTransfer([("s1", "t1"), ("s2", "t2")], p=p, beta=1000.0)
    term.build_term(sym(t1=kt(8, 8, 16), t2=kt(4, 4, 32)), sym(s1=kt(4, 4, 8), s2=kt(4, 4, 8)))
    f = {"t1": (B, 8, 8, 16), "t2": (B, 4, 4, 32), "s1": (B, 4, 4, 8), "s2": (B, 4, 4, 8)}
    f = {k: rng.normal(size=v).astype("float32") for k, v in f.items()}
    got = term.compute(View(None, {"t1": f["t1"], "t2": f["t2"]}),
                       View(None, {"s1": f["s1"], "s2": f["s2"]}))
    expected = 0.0
    for s_name, t_name in (("s1", "t1"), ("s2", "t2")):
        a_t = np_attention(f[t_name], p)
        a_s = np_resize_bilinear(np_attention(f[s_name], p), a_t.shape[1:3])
        expected = expected + ((np_at_normalise(a_s) - np_at_normalise(a_t)) ** 2).mean(-1)
    np.testing.assert_allclose(got, 500.0 * expected, rtol=1e-5)


def test_attention_transfer_sample_weights_and_pairs_forms(rng):
    term = AttentionTransfer(("s1", "t1"))  # a single pair is accepted as a tuple
    assert term.pairs == [("s1", "t1")]
    f_t = rng.normal(size=(B, 4, 4, 3)).astype("float32")
    f_s = rng.normal(size=(B, 4, 4, 5)).astype("float32")
    per = np.asarray(term.compute(View(None, {"t1": f_t}), View(None, {"s1": f_s})))
    w = np.array([2.0, 0.0, 1.0], "float32")
    got = float(term.loss(View(None, {"t1": f_t}), View(None, {"s1": f_s}), sample_weight=w))
    assert got == pytest.approx(keras_weighted(per, w), rel=1e-5)


def test_attention_transfer_validation():
    with pytest.raises(ValueError, match="non-empty list"):
        AttentionTransfer([])
    with pytest.raises(ValueError, match="non-empty list"):
        AttentionTransfer([("a", "b", "c")])
    with pytest.raises(ValueError, match="`p` must be a finite number > 0"):
        AttentionTransfer([("s", "t")], p=0)
    with pytest.raises(ValueError, match="beta.*>= 0"):
        AttentionTransfer([("s", "t")], beta=-1)
    with pytest.raises(ValueError, match="spatial feature maps.*before global pooling"):
        AttentionTransfer([("s", "t")]).build_term(sym(t=kt(32)), sym(s=kt(4, 4, 8)))


# ---------------------------------------------------------------- FeatureNormalizedKD
def ref_fnkd(z_t, f_t, z_s, f_s, tau):
    def temp(f):
        n = np.linalg.norm(f.reshape(len(f), -1).astype(np.float64), axis=-1, keepdims=True)
        return np.maximum(n, tau) / tau

    return np_kl(np_softmax(z_t / temp(f_t)), np_softmax(z_s / temp(f_s)))


def test_feature_normalized_kd_golden(rng):
    z_t = rng.normal(scale=4.0, size=(B + 1, 5)).astype("float32")
    z_s = rng.normal(scale=4.0, size=(B + 1, 5)).astype("float32")
    f_t = rng.normal(scale=2.0, size=(B + 1, 12)).astype("float32")
    f_s = rng.normal(scale=2.0, size=(B + 1, 2, 2, 3)).astype("float32")  # a map is flattened
    f_s[0] *= 0.01  # norm below tau: temperature clipped at 1
    term = FeatureNormalizedKD("sf", "tf", tau=2.0)
    term.build_term(sym(kt(5), tf=kt(12)), sym(kt(5), sf=kt(2, 2, 3)))
    got = term.compute(View(z_t, {"tf": f_t}), View(z_s, {"sf": f_s}))
    np.testing.assert_allclose(got, ref_fnkd(z_t, f_t, z_s, f_s, 2.0), rtol=1e-5, atol=1e-7)


def test_feature_normalized_kd_zero_feature_is_finite_and_weights(rng):
    z = rng.normal(size=(B, 4)).astype("float32")
    f = np.zeros((B, 6), "float32")
    zs = tf.Variable(z[::-1].copy())
    fs = tf.Variable(f)
    term = FeatureNormalizedKD("sf", "tf")
    w = np.array([1.0, 0.0, 3.0], "float32")
    with tf.GradientTape() as tape:
        loss = term.loss(View(z, {"tf": f}), View(zs, {"sf": fs}), sample_weight=w)
    assert np.isfinite(float(loss))
    g = tape.gradient(loss, [zs, fs])
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)
    per = np.asarray(term.compute(View(z, {"tf": f}), View(zs, {"sf": fs})))
    assert float(loss) == pytest.approx(keras_weighted(per, w), rel=1e-5)


def test_feature_normalized_kd_validation():
    with pytest.raises(ValueError, match="tau.*> 0"):
        FeatureNormalizedKD("s", "t", tau=0)
    with pytest.raises(ValueError, match="10 classes but the student's have 5"):
        FeatureNormalizedKD("s", "t").build_term(sym(kt(10), t=kt(4)), sym(kt(5), s=kt(4)))
    with pytest.raises(ValueError, match="not tapped"):
        FeatureNormalizedKD("s", "t").build_term(sym(kt(5)), sym(kt(5), s=kt(4)))
    term = FeatureNormalizedKD("s", "t")
    assert term.teacher_features == ("t",) and term.student_features == ("s",)


def test_hint_under_mixed_precision_policy(rng):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        term = built_hint((4, 4, 6), (4, 4, 3))
        assert term.adapter.compute_dtype == "float32" and term.adapter.kernel.dtype == "float32"
        f_t = tf.constant(rng.normal(size=(B, 4, 4, 6)), tf.float16)
        f_s = tf.constant(rng.normal(size=(B, 4, 4, 3)), tf.float16)
        loss = term.loss(View(None, {"t": f_t}), View(None, {"s": f_s}))
        assert loss.dtype == tf.float32 and np.isfinite(float(loss))
    finally:
        keras.config.set_dtype_policy(previous)


# ---------------------------------------------------------------- VID
from tfkd.knowledge import NST, OFD, VID  # noqa: E402


def np_vid_regressor(x, kernels):
    """1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv, no biases (float64)."""
    h = np.asarray(x, np.float64)
    for k, kernel in enumerate(kernels):
        h = h @ np.asarray(kernel, np.float64).reshape(kernel.shape[-2:])
        if k < len(kernels) - 1:
            h = np.maximum(h, 0.0)
    return h


def np_vid_nll(t, mu, alpha, eps):
    """Per-sample mean of the Gaussian NLL (without 0.5 log 2 pi), sigma2 = softplus(alpha) + eps."""
    var = np.log1p(np.exp(np.asarray(alpha, np.float64))) + eps
    nll = 0.5 * (np.log(var) + (np.asarray(t, np.float64) - mu) ** 2 / var)
    return nll.reshape(len(t), -1).mean(-1)


def vid_kernels(term, k):
    return [np.asarray(layer.kernel) for layer in term.regressors[k].layers if hasattr(layer, "kernel")]


def test_vid_golden_two_pairs_with_resize(rng):
    term = VID([("s1", "t1"), ("s2", "t2")], init_pred_var=3.0, eps=1e-4)
    term.build_term(sym(t1=kt(8, 8, 6), t2=kt(4, 4, 5)), sym(s1=kt(4, 4, 3), s2=kt(4, 4, 7)))
    alphas = [rng.normal(size=(6,)), rng.normal(size=(5,))]
    for var, value in zip(term.alphas, alphas):
        var.assign(value.astype("float32"))
    f = {"t1": (B, 8, 8, 6), "t2": (B, 4, 4, 5), "s1": (B, 4, 4, 3), "s2": (B, 4, 4, 7)}
    f = {k: rng.normal(size=v).astype("float32") for k, v in f.items()}
    got = term.compute(View(None, {"t1": f["t1"], "t2": f["t2"]}),
                       View(None, {"s1": f["s1"], "s2": f["s2"]}))
    assert got.shape == (B,)
    kernels = [vid_kernels(term, 0), vid_kernels(term, 1)]
    assert [k.shape for k in kernels[0]] == [(1, 1, 3, 6), (1, 1, 6, 6), (1, 1, 6, 6)]
    mu1 = np_resize_bilinear(np_vid_regressor(f["s1"], kernels[0]), (8, 8))
    mu2 = np_vid_regressor(f["s2"], kernels[1])
    expected = (np_vid_nll(f["t1"], mu1, alphas[0], 1e-4)
                + np_vid_nll(f["t2"], mu2, alphas[1], 1e-4))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_vid_golden_vectors_use_dense_layers(rng):
    term = VID(("s", "t"))
    term.build_term(sym(t=kt(6)), sym(s=kt(4)))
    assert all(isinstance(layer, (keras.layers.Dense, keras.layers.ReLU))
               for layer in term.regressors[0].layers)
    kernels = vid_kernels(term, 0)
    assert [k.shape for k in kernels] == [(4, 6), (6, 6), (6, 6)]
    f_t = rng.normal(size=(B, 6)).astype("float32")
    f_s = rng.normal(size=(B, 4)).astype("float32")
    got = term.compute(View(None, {"t": f_t}), View(None, {"s": f_s}))
    alpha = np.asarray(term.alphas[0])
    np.testing.assert_allclose(got, np_vid_nll(f_t, np_vid_regressor(f_s, kernels), alpha, 1e-5),
                               rtol=1e-5)


def test_vid_variance_starts_at_init_pred_var_and_alpha_is_trainable():
    term = VID([("s", "t")], init_pred_var=5.0, eps=1e-5)
    term.build_term(sym(t=kt(4, 4, 6)), sym(s=kt(4, 4, 3)))
    np.testing.assert_allclose(np.asarray(term.variances()[0]), np.full(6, 5.0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(term.alphas[0]), np.log(np.expm1(5.0 - 1e-5)), rtol=1e-6)
    assert term.alphas[0].dtype == "float32"
    trainable = {id(v) for v in term.trainable_weights}
    assert id(term.alphas[0]) in trainable and len(trainable) == 4  # alpha + 3 kernels
    term.build_term(sym(t=kt(4, 4, 6)), sym(s=kt(4, 4, 3)))  # building again adds nothing
    assert len(term.trainable_weights) == 4


def test_vid_perfect_prediction_leaves_the_entropy_floor(rng):
    term = VID([("s", "t")], init_pred_var=5.0)
    term.build_term(sym(t=kt(4, 4, 3)), sym(s=kt(4, 4, 3)))
    for layer in term.regressors[0].layers:
        if hasattr(layer, "kernel"):
            layer.kernel.assign(np.eye(3, dtype="float32")[None, None])
    f = np.abs(rng.normal(size=(B, 4, 4, 3))).astype("float32")  # ReLU leaves it alone
    got = np.asarray(term.compute(View(None, {"t": f}), View(None, {"s": f})))
    np.testing.assert_allclose(got, np.full(B, 0.5 * np.log(5.0)), rtol=1e-5)
    worse = np.asarray(term.compute(View(None, {"t": f + 0.1}), View(None, {"s": f})))
    assert np.all(worse > got)


def test_vid_gradients_reach_student_regressor_and_alpha_not_teacher(rng):
    term = VID([("s", "t")])
    term.build_term(sym(t=kt(8, 8, 6)), sym(s=kt(4, 4, 3)))
    f_s = tf.Variable(rng.normal(size=(B, 4, 4, 3)).astype("float32"))
    f_t = tf.Variable(rng.normal(size=(B, 8, 8, 6)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = term.loss(View(None, {"t": f_t}), View(None, {"s": f_s}))
    grads = tape.gradient(loss, [f_s, f_t] + term.trainable_weights)
    assert np.any(np.asarray(grads[0]) != 0)
    assert grads[1] is None  # the teacher is a fixed target
    assert all(g is not None and np.any(np.asarray(g) != 0) for g in grads[2:])


def test_vid_validation():
    with pytest.raises(ValueError, match="VID: `pairs` must be a non-empty list"):
        VID([])
    with pytest.raises(TypeError, match="VID: `pairs \\(teacher\\)` must be a layer name"):
        VID([("s", 3)])
    with pytest.raises(ValueError, match="`init_pred_var` must be larger than `eps`"):
        VID([("s", "t")], init_pred_var=1e-3, eps=1e-2)
    with pytest.raises(ValueError, match="VID: `eps` must be a finite number > 0"):
        VID([("s", "t")], eps=0.0)
    with pytest.raises(ValueError, match="same rank.*student \\(None, 4, 4, 3\\).*\\(None, 6\\)"):
        VID([("s", "t")]).build_term(sym(t=kt(6)), sym(s=kt(4, 4, 3)))
    with pytest.raises(ValueError, match="feature 'x' was not tapped"):
        VID([("s", "x")]).build_term(sym(t=kt(6)), sym(s=kt(4)))
    with pytest.raises(ValueError, match="build_term"):
        VID([("s", "t")]).compute(View(None, {"t": np.ones((1, 2))}), View(None, {"s": np.ones((1, 2))}))
    term = VID([("s1", "t"), ("s2", "t")])
    assert term.teacher_features == ("t",) and term.student_features == ("s1", "s2")


# ---------------------------------------------------------------- NST
def np_nst(f_t, f_s, degree, constant):
    """Squared MMD between the channels' L2-normalised maps, straight from the equation."""
    out = np.zeros(len(f_t))
    for i in range(len(f_t)):
        t = np.asarray(f_t[i], np.float64).reshape(-1, f_t.shape[-1]).T  # (C_t, positions)
        s = np.asarray(f_s[i], np.float64).reshape(-1, f_s.shape[-1]).T
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
        k = lambda a, b: np.mean([[(x @ y + constant) ** degree for y in b] for x in a])
        out[i] = k(t, t) + k(s, s) - 2.0 * k(s, t)
    return out


@pytest.mark.parametrize("degree, constant", [(2, 0.0), (3, 1.0), (1, 0.5)])
def test_nst_golden_with_resize(rng, degree, constant):
    term = NST([("s1", "t1"), ("s2", "t2")], degree=degree, constant=constant)
    term.build_term(sym(t1=kt(6, 6, 5), t2=kt(4, 4, 3)), sym(s1=kt(3, 3, 4), s2=kt(4, 4, 6)))
    f = {"t1": (B, 6, 6, 5), "t2": (B, 4, 4, 3), "s1": (B, 3, 3, 4), "s2": (B, 4, 4, 6)}
    f = {k: rng.normal(size=v).astype("float32") for k, v in f.items()}
    got = term.compute(View(None, {"t1": f["t1"], "t2": f["t2"]}),
                       View(None, {"s1": f["s1"], "s2": f["s2"]}))
    expected = (np_nst(f["t1"], np_resize_bilinear(f["s1"], (6, 6)), degree, constant)
                + np_nst(f["t2"], f["s2"], degree, constant))
    assert got.shape == (B,)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_nst_sequences_golden(rng):
    term = NST([("s", "t")])
    term.build_term(sym(t=kt(7, 4)), sym(s=kt(7, 2)))
    f_t = rng.normal(size=(B, 7, 4)).astype("float32")
    f_s = rng.normal(size=(B, 7, 2)).astype("float32")
    got = term.compute(View(None, {"t": f_t}), View(None, {"s": f_s}))
    np.testing.assert_allclose(got, np_nst(f_t, f_s, 2, 0.0), rtol=1e-4, atol=1e-6)


def test_nst_same_channel_patterns_give_zero_whatever_their_order_and_scale(rng):
    term = NST([("s", "t")])
    f_t = rng.normal(size=(B, 4, 4, 6)).astype("float32")
    f_s = 3.0 * f_t[..., ::-1]  # channels permuted and scaled: the same distribution
    got = np.asarray(term.compute(View(None, {"t": f_t}), View(None, {"s": f_s})))
    np.testing.assert_allclose(got, np.zeros(B), atol=1e-5)
    other = np.asarray(term.compute(View(None, {"t": f_t}),
                                    View(None, {"s": rng.normal(size=(B, 4, 4, 6)).astype("float32")})))
    assert np.all(other > 1e-3)


def test_nst_gradients_reach_student_not_teacher_and_zero_maps_are_finite(rng):
    term = NST([("s", "t")])
    f_s = tf.Variable(rng.normal(size=(B, 2, 2, 3)).astype("float32"))
    f_t = tf.Variable(rng.normal(size=(B, 4, 4, 6)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = term.loss(View(None, {"t": f_t}), View(None, {"s": f_s}))
    g_s, g_t = tape.gradient(loss, [f_s, f_t])
    assert np.any(np.asarray(g_s) != 0) and g_t is None
    zero = tf.Variable(np.zeros((B, 4, 4, 3), "float32"))  # a dead (all-zero) channel map
    with tf.GradientTape() as tape:
        loss = term.loss(View(None, {"t": f_t}), View(None, {"s": zero}))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(tape.gradient(loss, zero))))


def test_nst_validation():
    with pytest.raises(ValueError, match="NST: `degree` must be a whole number >= 1"):
        NST([("s", "t")], degree=2.5)
    with pytest.raises(ValueError, match="NST: `degree` must be a finite number > 0"):
        NST([("s", "t")], degree=0)
    with pytest.raises(ValueError, match="NST: `constant` must be a finite number >= 0"):
        NST([("s", "t")], constant=-1.0)
    with pytest.raises(ValueError, match="NST: `pairs` must be a non-empty list"):
        NST("s")
    with pytest.raises(ValueError, match="spatial feature maps.*before global pooling"):
        NST([("s", "t")]).build_term(sym(t=kt(6)), sym(s=kt(4, 4, 3)))
    assert NST([("s", "t")]).get_config()["degree"] == 2.0


# ---------------------------------------------------------------- OFD
def np_phi_cdf(x):
    from math import erf, sqrt

    return 0.5 * (1.0 + erf(x / sqrt(2.0)))


def np_gaussian_negative_mean(mean, std):
    """E[x | x < 0] for x ~ N(mean, std^2), by numerical integration."""
    x = np.linspace(min(mean, 0.0) - 12.0 * std, 0.0, 200001)
    density = np.exp(-0.5 * ((x - mean) / std) ** 2)
    return np.trapezoid(x * density, x) / np.trapezoid(density, x)


def np_batch_norm_train(x, gamma, beta, eps, keep):
    """BatchNormalization in training mode: statistics of the kept samples (biased variance)."""
    x = np.asarray(x, np.float64)
    mean = x[keep].mean(axis=(0, 1, 2))
    var = x[keep].var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_ofd(f_t, s_hat, margin, w, normalize):
    """Margin ReLU target, partial L2, per-sample sum / normalize, sample-weighted mean."""
    f_t = np.asarray(f_t, np.float64)
    if isinstance(margin, str):  # "batch"
        neg = (f_t < 0) * w[:, None, None, None]
        margin = (neg * f_t).sum(axis=(0, 1, 2)) / np.maximum(neg.sum(axis=(0, 1, 2)), 1e-300)
    target = np.maximum(f_t, np.asarray(margin, np.float64))
    d = (s_hat - target) ** 2
    d[(s_hat <= target) & (target <= 0)] = 0.0
    per = d.reshape(len(f_t), -1).sum(-1) / normalize
    return (w * per).sum() / w.sum()


def built_ofd(t_shape, s_shape, **kwargs):
    term = OFD("s", "t", **kwargs)
    term.build_term(sym(t=kt(*t_shape)), sym(s=kt(*s_shape)))
    return term


def randomise_connector_bn(term, rng):
    c = term.connector_bn.gamma.shape[0]
    term.connector_bn.gamma.assign(rng.uniform(0.5, 1.5, size=c).astype("float32"))
    term.connector_bn.beta.assign(rng.normal(size=c).astype("float32"))


@pytest.mark.parametrize("margin", ["batch", "list"])
def test_ofd_golden_training_mode_with_resize_and_weights(rng, margin):
    margins = -rng.uniform(0.1, 1.0, size=5)
    term = built_ofd((6, 6, 5), (3, 3, 4), margin="batch" if margin == "batch" else margins,
                     normalize=10.0)
    randomise_connector_bn(term, rng)
    kernel = np.asarray(term.connector_conv.kernel)[0, 0]
    gamma, beta = (np.asarray(v, np.float64) for v in (term.connector_bn.gamma, term.connector_bn.beta))
    f_t = rng.normal(size=(4, 6, 6, 5)).astype("float32")
    f_s = rng.normal(size=(4, 3, 3, 4)).astype("float32")
    w = np.array([1.0, 0.0, 2.0, 0.5])
    got = term.loss(View(None, {"t": f_t}), View(None, {"s": f_s}), sample_weight=w)
    assert got.shape == ()
    bn = np_batch_norm_train(f_s.astype(np.float64) @ kernel, gamma, beta, 1e-5, w > 0)
    s_hat = np_resize_bilinear(bn, (6, 6))
    expected = np_ofd(f_t, s_hat, "batch" if margin == "batch" else margins, w, 10.0)
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)
    # Without weights: every sample counts, and the loss is the plain mean.
    got = term.loss(View(None, {"t": f_t}), View(None, {"s": f_s}))
    s_hat = np_resize_bilinear(np_batch_norm_train(f_s @ kernel, gamma, beta, 1e-5, slice(None)),
                               (6, 6))
    expected = np_ofd(f_t, s_hat, "batch" if margin == "batch" else margins, np.ones(4), 10.0)
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_ofd_evaluation_uses_the_moving_statistics_and_training_updates_them(rng):
    term = built_ofd((4, 4, 3), (4, 4, 2))
    f_t = rng.normal(size=(B, 4, 4, 3)).astype("float32")
    f_s = rng.normal(loc=2.0, size=(B, 4, 4, 2)).astype("float32")
    t, s = View(None, {"t": f_t}), View(None, {"s": f_s})
    moving = np.asarray(term.connector_bn.moving_mean).copy()
    evaluated = float(term.loss(t, s, training=False))
    np.testing.assert_array_equal(np.asarray(term.connector_bn.moving_mean), moving)
    kernel = np.asarray(term.connector_conv.kernel)[0, 0]
    s_hat = (f_s @ kernel - 0.0) / np.sqrt(1.0 + 1e-5)  # moving mean 0, variance 1
    np.testing.assert_allclose(evaluated, np_ofd(f_t, s_hat, "batch", np.ones(B), 1000.0),
                               rtol=1e-4)
    term.loss(t, s)  # a training step
    assert np.any(np.asarray(term.connector_bn.moving_mean) != moving)


def identity_connector(term):
    c = term.connector_conv.kernel.shape[-1]
    term.connector_conv.kernel.assign(np.eye(c, dtype="float32")[None, None])
    term.connector_bn.moving_variance.assign(np.full(c, 1.0 - 1e-5, "float32"))


def test_ofd_identical_features_and_students_below_a_non_positive_target_cost_nothing(rng):
    term = built_ofd((4, 4, 3), (4, 4, 3), margin=[-0.5, -0.2, -1.0])
    identity_connector(term)  # evaluation mode: the connector is the identity
    f_t = rng.normal(size=(B, 4, 4, 3)).astype("float32")
    same = float(term.loss(View(None, {"t": f_t}), View(None, {"s": f_t}), training=False))
    assert same == pytest.approx(0.0, abs=1e-9)
    target = np.maximum(f_t, np.array([-0.5, -0.2, -1.0], "float32"))
    below = np.where(target > 0, target, target - rng.uniform(0, 2, size=f_t.shape)).astype("float32")
    assert float(term.loss(View(None, {"t": f_t}), View(None, {"s": below}),
                           training=False)) == pytest.approx(0.0, abs=1e-9)
    above = below + 0.1  # above the target: the partial L2 counts it
    assert float(term.loss(View(None, {"t": f_t}), View(None, {"s": above}),
                           training=False)) > 1e-4


def test_ofd_margin_from_batch_norm_matches_the_gaussian_negative_mean():
    bn = keras.layers.BatchNormalization()
    bn.build((None, 4, 4, 5))
    gamma = np.array([1.0, -2.0, 0.5, 1.0, 0.0], "float32")  # |gamma| is the std
    beta = np.array([0.0, 1.0, -0.3, 4.0, -0.7], "float32")
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    got = OFD.margin_from_batch_norm(bn)
    assert got.dtype == np.float32 and got.shape == (5,)
    for c in range(3):
        assert got[c] == pytest.approx(np_gaussian_negative_mean(beta[c], abs(gamma[c])), rel=1e-4)
    assert np_phi_cdf(-4.0) < 0.001 and got[3] == pytest.approx(-3.0)  # the official fallback
    assert got[4] == pytest.approx(-0.7)  # a constant channel: its value
    plain = keras.layers.BatchNormalization(center=False, scale=False)
    plain.build((None, 3))
    np.testing.assert_allclose(OFD.margin_from_batch_norm(plain),
                               np.full(3, -np.sqrt(2.0 / np.pi)), rtol=1e-6)
    term = OFD("s", "t", margin=got[:3])
    assert term.get_config()["margin"] == pytest.approx(got[:3].tolist())
    assert all(type(v) is float for v in term.get_config()["margin"])


def test_ofd_gradients_reach_student_and_connector_not_teacher(rng):
    term = built_ofd((4, 4, 6), (2, 2, 3))
    assert len(term.trainable_weights) == 3  # conv kernel, BN gamma and beta
    assert term.connector_conv.dtype_policy.compute_dtype == "float32"
    f_s = tf.Variable(rng.normal(size=(B, 2, 2, 3)).astype("float32"))
    f_t = tf.Variable(rng.normal(size=(B, 4, 4, 6)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = term.loss(View(None, {"t": f_t}), View(None, {"s": f_s}))
    grads = tape.gradient(loss, [f_s, f_t] + term.trainable_weights)
    assert np.any(np.asarray(grads[0]) != 0)
    assert grads[1] is None
    assert all(g is not None and np.any(np.asarray(g) != 0) for g in grads[2:])


def test_ofd_validation():
    with pytest.raises(ValueError, match="OFD: `margin` must be 'batch' or a list"):
        OFD("s", "t", margin="bn")
    with pytest.raises(ValueError, match="OFD: every margin must be a finite number <= 0"):
        OFD("s", "t", margin=[-1.0, 0.5])
    with pytest.raises(ValueError, match="non-empty 1-D list"):
        OFD("s", "t", margin=-1.0)
    with pytest.raises(ValueError, match="OFD: `normalize` must be a finite number > 0"):
        OFD("s", "t", normalize=0)
    with pytest.raises(TypeError, match="OFD: `teacher_layer` must be a layer name"):
        OFD("s", None)
    with pytest.raises(ValueError, match="`margin` has 2 values but the teacher feature has 3"):
        built_ofd((4, 4, 3), (4, 4, 3), margin=[-1.0, -1.0])
    with pytest.raises(ValueError, match="OFD distils 4-D feature maps"):
        built_ofd((6,), (4,))
    with pytest.raises(TypeError, match="expected a keras.layers.BatchNormalization"):
        OFD.margin_from_batch_norm(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="is not built"):
        OFD.margin_from_batch_norm(keras.layers.BatchNormalization())
    term = OFD("s", "t")
    assert term.teacher_features == ("t",) and term.student_features == ("s",)
    assert term.get_config()["margin"] == "batch"
