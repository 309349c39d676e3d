"""Image-to-image (super-resolution) terms against independent float64 NumPy references."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd
from kd_numpy import keras_weighted
from symbolic_views import build
from tfkd.knowledge import View
from tfkd.knowledge import restoration


def np_affinity_l1(t, s):
    """FAKD per image: L1 between the cosine-similarity matrices of all position pairs."""
    def affinity(x):
        x = np.asarray(x, np.float64).reshape(len(x), -1, x.shape[-1])
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        return np.einsum("bjc,bkc->bjk", x, x)
    return np.abs(affinity(s) - affinity(t)).reshape(len(t), -1).mean(-1)


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_reconstruction_kd_matches_numpy_with_sample_weights(rng, loss):
    t = rng.uniform(0, 255, size=(3, 6, 5, 3)).astype("float32")
    s = t + rng.normal(scale=10.0, size=t.shape).astype("float32")
    w = np.array([1.0, 0.0, 2.0], "float32")
    tv, sv = View(t), View(s)
    term = build(restoration.ReconstructionKD(loss=loss), tv, sv)
    d = np.asarray(s, np.float64) - np.asarray(t, np.float64)
    per = (np.abs(d) if loss == "l1" else d ** 2).reshape(3, -1).mean(-1)
    np.testing.assert_allclose(np.asarray(term.compute(tv, sv)), per, rtol=1e-5)
    np.testing.assert_allclose(float(term.loss(tv, sv, sample_weight=w)),
                               keras_weighted(per, w), rtol=1e-5)


def test_reconstruction_kd_moves_the_student_only(rng):
    t = tf.Variable(rng.uniform(0, 255, size=(2, 4, 4, 1)).astype("float32"))
    s = tf.Variable(rng.uniform(0, 255, size=(2, 4, 4, 1)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        value = restoration.ReconstructionKD().loss(View(t), View(s))
    assert tape.gradient(value, t) is None
    g = tape.gradient(value, s).numpy()
    np.testing.assert_allclose(g, np.sign(s.numpy() - t.numpy()) / 16 / 2, rtol=1e-6)


def test_reconstruction_kd_refuses_images_of_another_size_or_rank():
    term = restoration.ReconstructionKD()
    with pytest.raises(ValueError, match="differ in size or channels"):
        term.build_term(View(keras.KerasTensor((None, 16, 16, 1))),
                        View(keras.KerasTensor((None, 8, 8, 1))))
    with pytest.raises(ValueError, match="compares output images"):
        term.build_term(View(keras.KerasTensor((None, 10))), View(keras.KerasTensor((None, 10))))
    with pytest.raises(ValueError, match="`loss` must be one of"):
        restoration.ReconstructionKD(loss="huber")
    # Any size at inference: unknown sides are fine.
    term.build_term(View(keras.KerasTensor((None, None, None, 1))),
                    View(keras.KerasTensor((None, None, None, 1))))


@pytest.mark.parametrize("hw_s", [(6, 6), (3, 3)])
def test_feature_affinity_matches_numpy_fakd(rng, hw_s):
    t = rng.normal(size=(2, 6, 6, 7)).astype("float32")
    s = rng.normal(size=(2, *hw_s, 4)).astype("float32")
    tv, sv = View(None, {"body": t}), View(None, {"mapping": s})
    term = build(restoration.FeatureAffinityKD("mapping", "body"), tv, sv)
    if hw_s != (6, 6):  # the student map is resized to the teacher's first (bilinear)
        s = tf.image.resize(s, (6, 6), method="bilinear").numpy()
    np.testing.assert_allclose(np.asarray(term.compute(tv, sv)), np_affinity_l1(t, s),
                               rtol=1e-4, atol=1e-6)


def test_feature_affinity_is_zero_for_a_map_with_the_teachers_directions(rng):
    # Affinities ignore channel count and per-position scale: a student map that is a
    # rescaled, channel-rotated copy of the teacher's has exactly the teacher's affinities.
    t = rng.normal(size=(2, 5, 5, 4)).astype("float32")
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    s = (t @ q.astype("float32")) * rng.uniform(0.5, 3.0, size=(2, 5, 5, 1)).astype("float32")
    tv, sv = View(None, {"t": t}), View(None, {"s": s})
    term = build(restoration.FeatureAffinityKD("s", "t"), tv, sv)
    assert float(term.loss(tv, sv)) < 1e-6
    assert float(build(restoration.FeatureAffinityKD("s", "t"), tv,
                       View(None, {"s": rng.normal(size=s.shape).astype("float32")}))
                 .loss(tv, View(None, {"s": rng.normal(size=s.shape).astype("float32")}))) > 0.1


def test_terms_are_registered_serialize_and_are_exported():
    assert tfkd.knowledge.get("fakd:student_layer=a,teacher_layer=b").distance == "l1"
    assert isinstance(tfkd.knowledge.get("sr_output"), tfkd.knowledge.ReconstructionKD)
    for term in (tfkd.knowledge.ReconstructionKD(loss="l2", weight=0.5),
                 tfkd.knowledge.FeatureAffinityKD("a", "b", node_size=2)):
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
        assert type(again) is type(term) and again.get_config() == term.get_config()
