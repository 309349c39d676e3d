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
