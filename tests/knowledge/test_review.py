"""ReviewKD: float64 golden values of the ABF chain and HCL, batch statistics, training."""
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd.knowledge import ReviewKD, View

SHAPES_T = {"t1": (8, 8, 6), "t2": (4, 4, 10), "t3": (2, 2, 12)}
SHAPES_S = {"s1": (8, 8, 3), "s2": (4, 4, 5), "s3": (2, 2, 7)}


def sym(shapes):
    return View(None, {k: keras.KerasTensor((None,) + v) for k, v in shapes.items()})


def built(shapes_t=SHAPES_T, shapes_s=SHAPES_S, **kwargs):
    term = ReviewKD(list(shapes_s), list(shapes_t), **kwargs)
    term.build_term(sym(shapes_t), sym(shapes_s))
    return term


def randomise(term, rng):
    """Random values in every fusion weight, BN statistics included (none left at init)."""
    for w in term.weights:
        value = rng.normal(size=w.shape).astype("float32")
        if "variance" in w.path:
            value = rng.uniform(0.5, 2.0, size=w.shape).astype("float32")
        w.assign(value)


def np_conv(x, kernel):
    """'same' convolution, stride 1, no bias (float64)."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("bhwc,cd->bhwd", xp[:, dy:dy + x.shape[1], dx:dx + x.shape[2]],
                             kernel[dy, dx])
    return out


def np_bn(x, bn, training, keep):
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in bn.get_weights())
    if training:
        sel = x[keep]
        mean, var = sel.mean(axis=(0, 1, 2)), sel.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta


def np_review(term, feats_s, training, keep):
    """The authors' ABF chain, deepest first, straight from their forward()."""
    outs, residual = [None] * len(feats_s), None
    for i in reversed(range(len(feats_s))):
        (conv_in, bn_in), attention, (conv_out, bn_out) = term.fusions[i]
        x = np_bn(np_conv(feats_s[i], np.asarray(conv_in.kernel, np.float64)), bn_in,
                  training, keep)
        if attention is not None:
            factor = x.shape[1] // residual.shape[1]
            y = residual.repeat(factor, axis=1).repeat(factor, axis=2)  # nearest, 2x
            kernel, bias = (np.asarray(v, np.float64) for v in attention.get_weights())
            a = np_conv(np.concatenate([x, y], axis=-1), kernel) + bias
            a = 1.0 / (1.0 + np.exp(-a))
            x = x * a[..., :1] + y * a[..., 1:2]
        outs[i] = np_bn(np_conv(x, np.asarray(conv_out.kernel, np.float64)), bn_out,
                        training, keep)
        residual = x
    return outs


def np_adaptive_pool(x, out):
    """PyTorch's adaptive_avg_pool2d, bin by bin."""
    h, w = x.shape[1:3]
    res = np.zeros((x.shape[0], out, out, x.shape[-1]))
    for i in range(out):
        for j in range(out):
            r0, r1 = math.floor(i * h / out), math.ceil((i + 1) * h / out)
            c0, c1 = math.floor(j * w / out), math.ceil((j + 1) * w / out)
            res[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return res


def np_hcl(o, t, levels=(4, 2, 1)):
    """The authors' hcl(), per sample."""
    mse = lambda a, b: ((a - b) ** 2).reshape(len(a), -1).mean(-1)
    loss, cnt, tot = mse(o, t), 1.0, 1.0
    for level in levels:
        if level >= t.shape[1]:
            continue
        cnt /= 2.0
        loss = loss + mse(np_adaptive_pool(o, level), np_adaptive_pool(t, level)) * cnt
        tot += cnt
    return loss / tot


def inputs(rng, b=4):
    ft = {k: rng.normal(size=(b,) + v) for k, v in SHAPES_T.items()}
    fs = {k: rng.normal(size=(b,) + v) for k, v in SHAPES_S.items()}
    return ft, fs


@pytest.mark.parametrize("training", [True, False])
def test_review_kd_golden_against_the_authors_forward_and_hcl(rng, training):
    term = built()
    assert term.mid_width == 7 and term.fusions[-1][1] is None  # min(512, deepest C_s)
    randomise(term, rng)
    ft, fs = inputs(rng)
    w = np.array([1.0, 0.0, 2.0, 0.5])
    outs = np_review(term, list(fs.values()), training, keep=w > 0)
    per_sample = sum(np_hcl(o, t) for o, t in zip(outs, ft.values()))
    expected = (w * per_sample).sum() / w.sum()
    f32 = lambda d: {k: v.astype("float32") for k, v in d.items()}
    got = float(term.loss(View(None, f32(ft)), View(None, f32(fs)), None, w.astype("float32"),
                          training=training))
    assert got == pytest.approx(expected, rel=1e-4)


def test_hcl_pools_uneven_stages_as_pytorch_does(rng):
    term = ReviewKD(["s"], ["t"], pool_levels=(4, 2, 1))
    term.build_term(sym({"t": (6, 6, 3)}), sym({"s": (6, 6, 2)}))
    o = rng.normal(size=(3, 6, 6, 3))
    t = rng.normal(size=(3, 6, 6, 3))
    got = term._hcl(tf.constant(o, "float32"), tf.constant(t, "float32"))
    np.testing.assert_allclose(got, np_hcl(o, t), rtol=1e-5)


def test_review_kd_takes_a_pooled_vector_as_a_1x1_stage_and_resizes_mismatched_stages(rng):
    term = built({"t1": (4, 4, 6), "t2": (8,)}, {"s1": (2, 2, 3), "s2": (5,)}, mid_channels=4)
    assert tuple(term.fusions[1][2][0].kernel.shape) == (3, 3, 4, 8)
    value = term.loss(View(None, {"t1": rng.normal(size=(2, 4, 4, 6)).astype("float32"),
                                  "t2": rng.normal(size=(2, 8)).astype("float32")}),
                      View(None, {"s1": rng.normal(size=(2, 2, 2, 3)).astype("float32"),
                                  "s2": rng.normal(size=(2, 5)).astype("float32")}))
    assert np.isfinite(float(value))


def test_review_kd_gradients_reach_the_student_and_every_fusion_weight(rng):
    term = built()
    ft, fs = inputs(rng, b=3)
    fs = {k: tf.Variable(v.astype("float32")) for k, v in fs.items()}
    with tf.GradientTape() as tape:
        value = term.loss(View(None, {k: v.astype("float32") for k, v in ft.items()}),
                          View(None, fs))
    grads = tape.gradient(value, [*fs.values(), *term.trainable_weights])
    assert len(term.trainable_weights) == 3 * 6 + 2 * 2  # 3 x (2 convs + 2 BNs x 2) + 2 attentions
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_review_kd_trains_a_student_in_a_distiller(rng):
    def model(widths, name, seed):
        keras.utils.set_random_seed(seed)
        x = h = keras.Input((8, 8, 3))
        for i, width in enumerate(widths):
            h = keras.layers.Conv2D(width, 3, strides=1 if i == 0 else 2, padding="same",
                                    activation="relu", name=f"stage{i + 1}")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(x, keras.layers.Dense(4)(h), name=name)

    term = tfkd.knowledge.get("review_kd:student_layers=[stage1,stage2],"
                              "teacher_layers=[stage1,stage2]")
    student = model((4, 6), "student", 1)
    distiller = tfkd.Distiller(student, model((8, 12), "teacher", 0), knowledge=[term],
                               student_loss_weight=0.0)
    distiller.compile(keras.optimizers.Adam(1e-2))
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    history = distiller.fit(x, np.zeros(32), batch_size=8, epochs=4, verbose=0).history
    loss = history["review_kd_loss"]
    assert np.isfinite(loss).all() and loss[-1] < 0.8 * loss[0], loss
    assert not any("review" in v.path for v in student.weights)  # the fusions stay out


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(student_layers=[], teacher_layers=["t"]), ValueError, "non-empty list"),
    (dict(student_layers=["a", "b"], teacher_layers=["t"]), ValueError,
     "2 student layers and 1 teacher layers"),
    (dict(mid_channels=0), ValueError, "`mid_channels` must be an integer >= 1"),
    (dict(pool_levels=[4, 0]), ValueError, "`pool_levels` must be an integer >= 1"),
    (dict(pool_levels=3), TypeError, "`pool_levels` must be a list"),
])
def test_review_kd_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReviewKD(**{"student_layers": ["s"], "teacher_layers": ["t"], **kwargs})


def test_review_kd_needs_stages_of_known_size():
    with pytest.raises(ValueError, match="of known size"):
        ReviewKD(["s"], ["t"]).build_term(sym({"t": (None, None, 4)}), sym({"s": (4, 4, 2)}))
    with pytest.raises(ValueError, match="call `build_term` first"):
        ReviewKD(["s"], ["t"]).loss(View(None, {"t": np.ones((1, 2, 2, 1), "float32")}),
                                    View(None, {"s": np.ones((1, 2, 2, 1), "float32")}))
