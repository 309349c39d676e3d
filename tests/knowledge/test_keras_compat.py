"""keras.distillation losses as terms: same numbers as Keras, the default-KL warning."""
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tfkd.knowledge import (KerasDistillationLoss, KerasKLDivergenceWarning, SoftTargets, View,
                            as_knowledge, from_keras)

B, K = 5, 10


@pytest.fixture
def logits(rng):
    return (rng.normal(size=(B, K)).astype("float32"), rng.normal(size=(B, K)).astype("float32"))


def test_logits_distillation_equals_keras_and_soft_targets(logits):
    z_t, z_s = logits
    kd = keras.distillation.LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence())
    with warnings.catch_warnings():
        warnings.simplefilter("error", KerasKLDivergenceWarning)  # the fixed form must not warn
        term = from_keras(kd, weight=0.5)
    assert term.name == "logits_distillation" and term.weight == 0.5
    assert term.teacher_features == () and term.student_features == ()
    got = float(term.loss(View(z_t), View(z_s)))
    assert got == pytest.approx(float(kd.compute_loss(z_t, z_s)), rel=1e-6)
    assert got == pytest.approx(float(SoftTargets(temperature=4.0).loss(View(z_t), View(z_s))), rel=1e-4)


@pytest.mark.parametrize("loss", ["kl_divergence", "kld", keras.losses.kl_divergence])
def test_default_kl_string_warns_and_is_not_hinton(logits, loss):
    z_t, z_s = logits
    kd = keras.distillation.LogitsDistillation(temperature=4.0, loss=loss)
    with pytest.warns(KerasKLDivergenceWarning, match="loss=keras.losses.KLDivergence\\(\\)"):
        term = KerasDistillationLoss(kd)
    # The wrapper computes what Keras computes ...
    got = float(term.loss(View(z_t), View(z_s)))
    assert got == pytest.approx(float(kd.compute_loss(z_t, z_s)), rel=1e-6)
    # ... which is not Hinton's loss.
    hinton = float(SoftTargets(temperature=4.0).loss(View(z_t), View(z_s)))
    assert abs(got - hinton) > 0.1 * hinton


def test_default_constructor_warns():
    with pytest.warns(KerasKLDivergenceWarning, match="not Hinton's distillation loss"):
        as_knowledge(keras.distillation.LogitsDistillation())


def test_feature_distillation_taps_layers_and_equals_keras(rng):
    fd = keras.distillation.FeatureDistillation(loss="mse", teacher_layer_name="t_conv",
                                                student_layer_name="s_conv")
    term = as_knowledge(fd)
    assert isinstance(term, KerasDistillationLoss) and term.name == "feature_distillation"
    assert term.teacher_features == ("t_conv",) and term.student_features == ("s_conv",)
    term.build_term(View(keras.KerasTensor((None, 10)), {"t_conv": keras.KerasTensor((None, 4, 4, 8))}),
                    View(keras.KerasTensor((None, 10)), {"s_conv": keras.KerasTensor((None, 4, 4, 8))}))
    f_t, f_s = rng.normal(size=(2, B, 4, 4, 8)).astype("float32")
    got = float(term.loss(View(None, {"t_conv": f_t}), View(None, {"s_conv": f_s})))
    assert got == pytest.approx(float(fd.compute_loss(f_t, f_s)), rel=1e-6)
    assert got == pytest.approx(float(np.mean((f_t - f_s) ** 2)), rel=1e-5)


def test_feature_distillation_shape_mismatch_is_caught_at_build():
    fd = keras.distillation.FeatureDistillation(teacher_layer_name="t", student_layer_name="s")
    with pytest.raises(ValueError, match="cannot compare.*Hint"):
        as_knowledge(fd).build_term(View(keras.KerasTensor((None, 3)), {"t": keras.KerasTensor((None, 4, 4, 16))}),
                                    View(keras.KerasTensor((None, 3)), {"s": keras.KerasTensor((None, 4, 4, 8))}))


def test_as_knowledge_passes_terms_and_rejects_others():
    term = SoftTargets()
    assert as_knowledge(term) is term
    assert isinstance(as_knowledge("soft_targets"), SoftTargets)  # a spec (the registry's `get`)
    with pytest.raises(TypeError, match="not a knowledge term.*LogitsDistillation"):
        as_knowledge(keras.losses.KLDivergence())
    with pytest.raises(TypeError, match="class SoftTargets, not an instance"):
        as_knowledge(SoftTargets)
    with pytest.raises(TypeError, match="wraps a keras.distillation.DistillationLoss"):
        KerasDistillationLoss(keras.losses.KLDivergence())


@pytest.mark.parametrize("make", [
    lambda: keras.distillation.LogitsDistillation(temperature=2.5, loss=keras.losses.KLDivergence()),
    lambda: keras.distillation.FeatureDistillation(loss="mae", teacher_layer_name="a", student_layer_name="b"),
])
def test_wrapper_config_round_trip(make, logits):
    term = from_keras(make(), weight=0.3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert isinstance(restored, KerasDistillationLoss)
    assert restored.get_config() == term.get_config()
    inner = restored.distillation_loss
    assert type(inner) is type(term.distillation_loss)
    if isinstance(inner, keras.distillation.LogitsDistillation):
        assert isinstance(inner.loss, keras.losses.KLDivergence) and inner.temperature == 2.5
        z_t, z_s = logits
        assert float(restored.loss(View(z_t), View(z_s))) == pytest.approx(float(term.loss(View(z_t), View(z_s))))
    else:
        assert restored.teacher_features == ("a",) and restored.student_features == ("b",)


def test_logits_distillation_builds_on_symbolic_views_and_checks_widths():
    kd = keras.distillation.LogitsDistillation(loss=keras.losses.KLDivergence())
    term = as_knowledge(kd)
    term.build_term(View(keras.KerasTensor((None, 10))), View(keras.KerasTensor((None, 10))))
    with pytest.raises(ValueError, match="cannot compare"):
        as_knowledge(kd).build_term(View(keras.KerasTensor((None, 10))), View(keras.KerasTensor((None, 5))))
