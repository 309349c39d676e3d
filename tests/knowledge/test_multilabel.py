"""BinarySoftTargets against an independent NumPy computation of the per-class Bernoulli KL."""
import keras
import numpy as np
import pytest

from tfkd.knowledge import BinarySoftTargets, View


def numpy_binary_kd(z_t, z_s, temperature):
    z_t, z_s = z_t.astype("float64") / temperature, z_s.astype("float64") / temperature
    p_t, p_s = 1 / (1 + np.exp(-z_t)), 1 / (1 + np.exp(-z_s))
    kl = p_t * np.log(p_t / p_s) + (1 - p_t) * np.log((1 - p_t) / (1 - p_s))
    return temperature ** 2 * kl.mean(axis=-1)


def test_golden_value_and_sample_weights():
    rng = np.random.default_rng(3)
    z_t = rng.normal(size=(6, 5)).astype("float32") * 3
    z_s = rng.normal(size=(6, 5)).astype("float32") * 3
    term = BinarySoftTargets(temperature=2.0)
    expected = numpy_binary_kd(z_t, z_s, 2.0)
    got = term.compute(View(z_t), View(z_s))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    weights = np.array([1, 0, 2, 0, 1, 1], "float32")
    reduced = float(term.loss(View(z_t), View(z_s), sample_weight=weights))
    assert reduced == pytest.approx((expected * weights).sum() / 6, rel=1e-5)


def test_config_round_trip_and_validation():
    term = BinarySoftTargets(temperature=3.0, weight=0.5, name="bkd")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert (clone.temperature, clone.weight, clone.name) == (3.0, 0.5, "bkd")
    with pytest.raises(ValueError, match="temperature"):
        BinarySoftTargets(temperature=0)
    with pytest.raises(ValueError, match="same shape"):
        BinarySoftTargets().build_term(View(keras.KerasTensor((None, 80))),
                                       View(keras.KerasTensor((None, 10))))
