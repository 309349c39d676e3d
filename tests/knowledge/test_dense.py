"""Dense (segmentation) terms against independent float64 NumPy references."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
from kd_numpy import np_kl, np_resize_bilinear, np_softmax
from symbolic_views import build
from tfkd.knowledge import View
from tfkd.knowledge import dense

IGNORE = 255


def maps(rng, b=3, t_hw=(8, 8), s_hw=(4, 4), c_t=5, c_s=5):
    t = rng.normal(size=(b, *t_hw, c_t)).astype("float32") * 2.0
    s = rng.normal(size=(b, *s_hw, c_s)).astype("float32")
    return t, s


# ----- numpy references ---------------------------------------------------------------------


def np_up(s, t):
    s = np.asarray(s, np.float64)
    return s if s.shape[1:3] == t.shape[1:3] else np_resize_bilinear(s, t.shape[1:3])


def np_pixel_kd(t, s, temp, valid, pixel_w=None):
    s = np_up(s, t)
    kl = np_kl(np_softmax(t / temp), np_softmax(s / temp))  # (B, H, W)
    w = valid.astype(np.float64) if pixel_w is None else valid * pixel_w
    count = np.maximum((w > 0).sum(axis=(1, 2)) if pixel_w is not None else valid.sum(axis=(1, 2)), 1)
    return temp ** 2 * (kl * w).sum(axis=(1, 2)) / count


def np_cwd(t, s, temp):
    s = np_up(s, t)
    b, c = t.shape[0], t.shape[-1]
    ft = np.asarray(t, np.float64).reshape(b, -1, c).transpose(0, 2, 1)
    fs = s.reshape(b, -1, c).transpose(0, 2, 1)
    return temp ** 2 * np_kl(np_softmax(ft / temp), np_softmax(fs / temp)).mean(axis=-1)


def np_pool(x, n):
    b, h, w, c = x.shape
    h, w = h // n * n, w // n * n
    return x[:, :h, :w].reshape(b, h // n, n, w // n, n, c).mean(axis=(2, 4))


def np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_pairwise(t, s, node):
    s = np_up(s, t)

    def aff(x):
        x = np_unit(np_pool(np.asarray(x, np.float64), node).reshape(x.shape[0], -1, x.shape[-1]))
        return np.einsum("bjc,bkc->bjk", x, x)

    return ((aff(s) - aff(t)) ** 2).reshape(t.shape[0], -1).mean(axis=-1)


def np_cirkd(t, s, temp, pool, w):
    s = np_up(s, t)
    et = np_unit(np_pool(np.asarray(t, np.float64), pool))
    es = np_unit(np_pool(s, pool))
    n = et.shape[1] * et.shape[2]
    keep = np.repeat(w > 0, n)
    wp = np.repeat(w, n)[keep]
    et, es = et.reshape(-1, et.shape[-1])[keep], es.reshape(-1, es.shape[-1])[keep]
    kl = np_kl(np_softmax(et @ et.T / temp), np_softmax(es @ es.T / temp))
    return temp ** 2 * (wp * kl).sum() / wp.sum()


# ----- pixel-wise soft targets --------------------------------------------------------------


def test_pixel_kd_matches_numpy_with_ignored_pixels_and_a_resized_student(rng):
    t, s = maps(rng)
    y = rng.integers(0, 5, size=(3, 8, 8))
    y[rng.random(y.shape) < 0.3] = IGNORE
    term = build(dense.PixelSoftTargets(temperature=3.0, ignore_label=IGNORE), View(t), View(s))
    ref = np_pixel_kd(t, s, 3.0, y != IGNORE)
    np.testing.assert_allclose(np.asarray(term.compute(View(t), View(s), y)), ref, rtol=1e-5)
    w = np.array([1.0, 0.0, 2.0], "float32")
    assert float(term.loss(View(t), View(s), y, w)) == pytest.approx(np.sum(ref * w) / 3, rel=1e-5)
    # Without ignore_label every pixel counts, and no labels are needed.
    plain = dense.PixelSoftTargets(temperature=3.0)
    assert not plain.requires_labels and term.requires_labels
    np.testing.assert_allclose(np.asarray(plain.compute(View(t), View(s))),
                               np_pixel_kd(t, s, 3.0, np.ones((3, 8, 8), bool)), rtol=1e-5)


def test_pixel_kd_per_pixel_weights_leave_padding_out_and_labels_are_resized(rng):
    t, s = maps(rng)
    pad = np.ones((3, 8, 8), "float32")
    pad[:, 5:, :] = 0.0  # zero padding at the bottom
    pad[2, :2, :2] = 3.0
    term = dense.PixelSoftTargets(temperature=2.0)
    ref = np_pixel_kd(t, s, 2.0, np.ones((3, 8, 8), bool), pixel_w=pad)
    assert float(term.loss(View(t), View(s), None, pad)) == pytest.approx(ref.mean(), rel=1e-5)
    # Labels at twice the teacher's resolution: nearest neighbour picks pixel 2i + 1.
    y16 = rng.integers(0, 5, size=(3, 16, 16))
    y16[rng.random(y16.shape) < 0.3] = IGNORE
    term = dense.PixelSoftTargets(temperature=2.0, ignore_label=IGNORE)
    ref = np_pixel_kd(t, s, 2.0, y16[:, 1::2, 1::2] != IGNORE)
    np.testing.assert_allclose(np.asarray(term.compute(View(t), View(s), y16[..., None])), ref,
                               rtol=1e-5)


def test_pixel_kd_an_all_void_image_has_loss_zero_and_missing_labels_raise(rng):
    t, s = maps(rng)
    y = np.full((3, 8, 8), IGNORE)
    y[0] = 1
    term = dense.PixelSoftTargets(ignore_label=IGNORE)
    out = np.asarray(term.compute(View(t), View(s), y))
    assert out[0] > 0 and out[1] == 0 and out[2] == 0
    with pytest.raises(ValueError, match="PixelSoftTargets needs the label maps.*ignore_label=None"):
        term.loss(View(t), View(s))
    with pytest.raises(TypeError, match="PixelSoftTargets: `ignore_label` must be an integer"):
        dense.PixelSoftTargets(ignore_label=2.5)


def test_pixel_kd_trains_the_student_through_the_resize(rng):
    t, s = maps(rng)
    s = tf.Variable(s)
    term = dense.PixelSoftTargets(temperature=2.0)
    with tf.GradientTape() as tape:
        value = term.loss(View(t), View(s))
    grad = tape.gradient(value, s).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


# ----- channel-wise -------------------------------------------------------------------------


def test_cwd_on_logits_matches_numpy(rng):
    t, s = maps(rng, t_hw=(8, 6), s_hw=(4, 3))
    term = build(dense.ChannelWiseKD(temperature=4.0), View(t), View(s))
    assert term.adapter is None
    np.testing.assert_allclose(np.asarray(term.compute(View(t), View(s))), np_cwd(t, s, 4.0),
                               rtol=1e-5)


def test_cwd_on_features_uses_a_1x1_adapter_when_widths_differ(rng):
    t, s = maps(rng, t_hw=(4, 4), s_hw=(2, 2), c_t=6, c_s=3)
    tv, sv = View(None, {"t": t}), View(None, {"s": s})
    term = build(dense.ChannelWiseKD(2.0, student_layer="s", teacher_layer="t"), tv, sv)
    kernel, bias = [np.asarray(v, np.float64) for v in term.adapter.get_weights()]
    projected = s.astype(np.float64) @ kernel[0, 0] + bias
    np.testing.assert_allclose(np.asarray(term.compute(tv, sv)), np_cwd(t, projected, 2.0),
                               rtol=1e-5)
    assert len(term.trainable_weights) == 2


# ----- pair-wise ----------------------------------------------------------------------------


@pytest.mark.parametrize("t_hw, node", [((8, 8), 2), ((5, 7), 2), ((4, 4), 1)])
def test_pairwise_matches_numpy(rng, t_hw, node):
    t, s = maps(rng, t_hw=t_hw, s_hw=(3, 3), c_t=6, c_s=4)
    tv, sv = View(None, {"t": t}), View(None, {"s": s})
    term = build(dense.PairwiseKD(node_size=node, student_layer="s", teacher_layer="t"), tv, sv)
    np.testing.assert_allclose(np.asarray(term.compute(tv, sv)), np_pairwise(t, s, node),
                               rtol=1e-4, atol=1e-7)


def test_pairwise_rejects_a_node_larger_than_the_map_and_non_integer_sizes(rng):
    t, s = maps(rng, t_hw=(2, 2), s_hw=(2, 2))
    with pytest.raises(ValueError, match="PairwiseKD: the teacher's map .* smaller than one node"):
        build(dense.PairwiseKD(node_size=4), View(t), View(s))
    with pytest.raises(ValueError, match="PairwiseKD: `node_size` must be an integer >= 1"):
        dense.PairwiseKD(node_size=1.5)
    assert dense.PairwiseKD(node_size=3.0).node_size == 3


# ----- cross-image --------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [1, 2])
def test_cirkd_matches_numpy_with_sample_weights(rng, pool):
    t, s = maps(rng, b=4, c_t=6, c_s=5)
    w = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    tv, sv = View(None, {"t": t}), View(None, {"s": s})
    term = build(dense.CrossImageRelationalKD(0.5, pool=pool, student_layer="s", teacher_layer="t"),
                 tv, sv)
    assert float(term.loss(tv, sv, None, w)) == pytest.approx(np_cirkd(t, s, 0.5, pool, w), rel=1e-4)
    assert float(term.loss(tv, sv)) == pytest.approx(np_cirkd(t, s, 0.5, pool, np.ones(4)), rel=1e-4)


def np_cirkd_memory(t, s, temp, w, mem_t, mem_valid):
    """CIRKD with a teacher memory as extra columns; s already has the teacher's width."""
    et = np_unit(np.asarray(t, np.float64)).reshape(-1, t.shape[-1])
    es = np_unit(np.asarray(s, np.float64)).reshape(-1, t.shape[-1])
    n = t.shape[1] * t.shape[2]
    wp = np.repeat(w, n)
    cols = np.concatenate([wp > 0, mem_valid > 0])
    rel_t = np.concatenate([et @ et.T, et @ mem_t.T], axis=1)[:, cols]
    rel_s = np.concatenate([es @ es.T, es @ mem_t.T], axis=1)[:, cols]
    kl = np_kl(np_softmax(rel_t / temp), np_softmax(rel_s / temp))
    return temp ** 2 * (wp * kl).sum() / wp.sum(), et


def test_cirkd_memory_is_a_fifo_queue_of_teacher_pixels_used_as_columns(rng):
    size = 40  # 2 images x 16 pixels per call: the second call wraps around
    term = dense.CrossImageRelationalKD(0.5, memory_size=size, student_layer="s",
                                        teacher_layer="t")
    t0, s0 = maps(rng, b=2, t_hw=(4, 4), s_hw=(4, 4), c_t=6, c_s=4)
    build(term, View(None, {"t": t0}), View(None, {"s": s0}))
    assert term.adapter is not None  # widths differ: the student is projected to 6 channels
    assert {v.name for v in term.non_trainable_weights} == {"memory", "memory_valid",
                                                             "memory_pointer"}
    kernel, bias = [np.asarray(v, np.float64) for v in term.adapter.get_weights()]
    project = lambda s: np_up(s, t0) @ kernel[0, 0] + bias
    mem, valid, pointer = np.zeros((size, 6)), np.zeros(size), 0
    step = tf.function(lambda t, s, w: term.loss(View(None, {"t": t}), View(None, {"s": s}),
                                                 None, w), jit_compile=True)
    for i, w in enumerate(([1.0, 1.0], [0.0, 2.0], [1.0, 0.5])):
        t, s = maps(rng, b=2, t_hw=(4, 4), s_hw=(2, 2), c_t=6, c_s=4)
        w = np.array(w, "float32")
        ref, et = np_cirkd_memory(t, project(s), 0.5, w, mem, valid)
        # The first call eagerly, the next ones compiled with XLA: one queue for both.
        got = float(step(t, s, w) if i else
                    term.loss(View(None, {"t": t}), View(None, {"s": s}), None, w))
        assert got == pytest.approx(ref, rel=1e-4), i
        index = (pointer + np.arange(len(et))) % size
        keep = np.repeat(w > 0, 16)  # weight-0 images leave no trace: zeros, marked empty
        mem[index], valid[index], pointer = et * keep[:, None], keep, (pointer + len(et)) % size
        np.testing.assert_allclose(term.memory.numpy(), mem, atol=1e-6)
        np.testing.assert_array_equal(term.memory_valid.numpy(), valid)
        assert int(term.memory_pointer.numpy()) == pointer
    restored = dense.CrossImageRelationalKD.from_config(term.get_config())
    assert restored.get_config()["memory_size"] == 40.0


def test_cirkd_memory_without_build_term_is_built_eagerly(rng):
    t, s = maps(rng, b=2)
    term = dense.CrossImageRelationalKD(memory_size=8, pool=2)
    first = float(term.loss(View(t), View(s)))
    assert np.isfinite(first) and term.memory.shape == (8, 5) and term.adapter is None
    assert float(term.loss(View(t), View(s))) != pytest.approx(first)  # the memory now counts


# ----- shared behaviour ---------------------------------------------------------------------

TERMS = [
    lambda **k: dense.PixelSoftTargets(**k),
    lambda **k: dense.ChannelWiseKD(**k),
    lambda **k: dense.PairwiseKD(node_size=1, **k),
    lambda **k: dense.CrossImageRelationalKD(**k),
    lambda **k: dense.CrossImageRelationalKD(memory_size=50, **k),
]


@pytest.mark.parametrize("make", TERMS)
def test_rank_errors_name_the_class_and_the_fix(make):
    term = make()
    owner = type(term).__name__
    flat = View(keras.KerasTensor((None, 5)))
    good = View(keras.KerasTensor((None, 8, 8, 5)))
    for teacher, student, side in ((good, flat, "student"), (flat, good, "teacher")):
        with pytest.raises(ValueError, match=rf"{owner} expects the {side}'s per-pixel logits as a "
                                             r"4-D \(batch, height, width, channels\).*`output=`"):
            term.build_term(teacher, student)
    with pytest.raises(ValueError, match=rf"{owner} expects the student's"):
        term.loss(View(np.zeros((2, 8, 8, 5), "float32")), View(np.zeros((2, 5), "float32")))
    with pytest.raises(ValueError, match=f"{owner}: the teacher's logits have 5 classes but the "
                                         "student's have 4"):
        term.build_term(good, View(keras.KerasTensor((None, 8, 8, 4))))


@pytest.mark.parametrize("make", TERMS)
def test_dynamic_batch_and_size_under_xla(make, rng):
    t, s = maps(rng, b=2)
    term, twin = build(make(), View(t), View(s)), build(make(), View(t), View(s))
    twin.set_weights(term.get_weights())  # the same adapter; both memories empty
    y = np.zeros((2, 8, 8), "int64")

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec((None, 8, 8, 5)),
                                                     tf.TensorSpec((None, 4, 4, 5))])
    def run(t, s):
        return term.loss(View(t), View(s), y[:1].repeat(2, axis=0))

    assert float(run(t, s)) == pytest.approx(float(twin.loss(View(t), View(s), y)), rel=1e-4)


@pytest.mark.parametrize("make", TERMS[1:4])
def test_per_pixel_weights_weigh_whole_map_terms_by_their_mean(make, rng):
    t, s = maps(rng, b=3)
    pixel = rng.random((3, 8, 8)).astype("float32")
    pixel[1] = 0.0
    term = build(make(), View(t), View(s))
    np.testing.assert_allclose(float(term.loss(View(t), View(s), None, pixel)),
                               float(term.loss(View(t), View(s), None, pixel.mean(axis=(1, 2)))),
                               rtol=1e-5)


def test_pixel_kd_rejects_label_maps_of_the_wrong_rank(rng):
    t, s = maps(rng)
    term = dense.PixelSoftTargets(ignore_label=IGNORE)
    with pytest.raises(ValueError, match=r"PixelSoftTargets: the labels must be a \(batch, "
                                         r"height, width\) map, got shape \(3, 64\)"):
        term.loss(View(t), View(s), np.zeros((3, 64), "int64"))


def test_cirkd_memory_never_stores_a_non_finite_embedding(rng):
    t, s = maps(rng, b=2)
    term = dense.CrossImageRelationalKD(memory_size=256)
    bad = t.copy()
    bad[0, 0, 0, 0] = np.nan
    assert np.isnan(float(term.loss(View(bad), View(s))))
    assert term.memory_valid.numpy().sum() == 127 and np.isfinite(term.memory.numpy()).all()
    assert np.isfinite(float(term.loss(View(t), View(s))))


def test_terms_are_registered_and_exported():
    for name, cls in (("pixel_kd", "PixelSoftTargets"), ("cwd", "ChannelWiseKD"),
                      ("pairwise_kd", "PairwiseKD"), ("cirkd", "CrossImageRelationalKD")):
        assert type(tfkd.knowledge.get(name)) is getattr(tfkd.knowledge, cls)


def segmenter(width, out_hw, name, seed):
    """A tiny fully convolutional segmenter: 16x16 RGB in, (out_hw x out_hw x 5) logits out."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(width, 3, strides=16 // out_hw, padding="same", activation="relu",
                            name="feat")(x)
    return keras.Model(x, keras.layers.Conv2D(5, 1, name="logits")(h), name=name)


def test_distiller_trains_a_segmenter_with_every_dense_term(rng):
    teacher, student = segmenter(8, 8, "teacher", 0), segmenter(4, 4, "student", 1)
    terms = [dense.PixelSoftTargets(2.0, ignore_label=IGNORE), dense.ChannelWiseKD(),
             dense.PairwiseKD(2, student_layer="feat", teacher_layer="feat"),
             dense.CrossImageRelationalKD(memory_size=64, student_layer="feat",
                                          teacher_layer="feat")]
    distiller = tfkd.Distiller(student, teacher, knowledge=terms, student_loss_weight=0.0)
    distiller.compile(keras.optimizers.Adam(1e-2))
    x = rng.normal(size=(16, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 5, size=(16, 8, 8))
    y[rng.random(y.shape) < 0.2] = IGNORE
    kd = distiller.fit(x, y, batch_size=8, epochs=4, verbose=0).history["pixel_kd_loss"]
    assert kd[-1] < kd[0] and np.isfinite(kd).all(), kd
    assert float(terms[3].memory_valid.numpy().sum()) == 64
    with pytest.raises(ValueError, match="need labels"):
        distiller.fit(x, epochs=1, batch_size=8, verbose=0)


def test_cirkd_memory_is_filled_by_training_steps_only(rng):
    teacher, student = segmenter(8, 8, "teacher", 0), segmenter(8, 8, "student", 1)
    term = dense.CrossImageRelationalKD(memory_size=32, student_layer="feat",
                                        teacher_layer="feat")
    distiller = tfkd.Distiller(student, teacher, knowledge=[term])
    distiller.compile(keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = rng.normal(size=(4, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 5, size=(4, 8, 8))
    distiller.evaluate(x, y, batch_size=4, verbose=0)
    assert float(term.memory_valid.numpy().sum()) == 0  # evaluation read it, pushed nothing
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    after_fit = term.memory.numpy().copy()
    assert float(term.memory_valid.numpy().sum()) == 32
    distiller.evaluate(x[::-1] * 2.0, y, batch_size=4, verbose=0)
    np.testing.assert_array_equal(term.memory.numpy(), after_fit)
