"""Contract shared by every term: config round trips, docstring examples, public names."""
import doctest
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd.knowledge as knowledge
from tfkd.knowledge import (AttentionTransfer, DecoupledKD, FeatureNormalizedKD, Hint, Knowledge,
                            LabelSmoothedKD, RelationalKD, SimilarityPreserving, SoftTargets,
                            TeacherFree, View)

TERMS = [
    SoftTargets(temperature=3.0, weight=0.7, output="logits", name="kd"),
    DecoupledKD(alpha=0.5, beta=4.0, temperature=2.0, weight=2.0, output=1),
    TeacherFree(correct_prob=0.95, temperature=10.0, weight=0.1),
    LabelSmoothedKD(smoothing=0.2, alpha=0.4, temperature=5.0),
    Hint("s_block", "t_block", adapter="conv", weight=0.5, name="hint2"),
    AttentionTransfer([("s1", "t1"), ("s2", "t2")], p=3, beta=500.0),
    FeatureNormalizedKD("s_pool", "t_pool", tau=1.5, weight=9.0, output="logits"),
    RelationalKD(distance=25.0, angle=50.0, student_layer="s_emb", teacher_layer="t_emb"),
    SimilarityPreserving("s_block", "t_block", weight=3000.0),
]


@pytest.mark.parametrize("term", TERMS, ids=lambda t: type(t).__name__)
def test_config_round_trip(term):
    config = keras.saving.serialize_keras_object(term)
    assert config["registered_name"].startswith("tfkd>")
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(term)
    assert restored.get_config() == term.get_config()
    assert restored.name == term.name and restored.weight == term.weight
    assert restored.teacher_features == term.teacher_features
    assert restored.student_features == term.student_features
    assert "trainable" not in term.get_config() and "dtype" not in term.get_config()


def test_default_names_are_the_metric_prefixes():
    assert SoftTargets().name == "soft_targets"
    assert Hint("a", "b").name == "hint"
    assert {type(t).default_name for t in TERMS} == {
        "soft_targets", "dkd", "teacher_free", "label_smoothed_kd", "hint", "attention", "fnkd",
        "rkd", "similarity"}


@pytest.mark.parametrize("module", ["response", "feature", "relation", "keras_compat"])
def test_docstring_examples_run(module):
    mod = getattr(knowledge, module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_public_names():
    for name in knowledge.__all__:
        assert hasattr(knowledge, name), name
    for cls in (type(t) for t in TERMS):
        assert issubclass(cls, Knowledge)
        assert cls.__doc__ and ">>>" in cls.__doc__
        assert "Paper" in cls.__doc__ or "Label smoothing:" in cls.__doc__


@pytest.mark.parametrize("cls", [type(t) for t in TERMS])
def test_negative_weight_rejected(cls):
    args = {Hint: ("s", "t"), FeatureNormalizedKD: ("s", "t"), SimilarityPreserving: ("s", "t"),
            AttentionTransfer: ([("s", "t")],)}.get(cls, ())
    with pytest.raises(ValueError, match="`weight` must be a finite number >= 0"):
        cls(*args, weight=-1.0)


def test_all_terms_compile_with_xla(rng):
    """Every term traces under tf.function(jit_compile=True), as the Distiller may run it."""
    z_t = rng.normal(size=(4, 5)).astype("float32")
    z_s = rng.normal(size=(4, 5)).astype("float32")
    f_t = rng.normal(size=(4, 4, 4, 6)).astype("float32")
    f_s = rng.normal(size=(4, 2, 2, 3)).astype("float32")
    y = np.array([0, 1, 2, 3])
    w = np.array([1.0, 0.0, 2.0, 1.0], "float32")
    terms = [SoftTargets(), DecoupledKD(), TeacherFree(), LabelSmoothedKD(), Hint("s", "t"),
             AttentionTransfer([("s", "t")]), FeatureNormalizedKD("s", "t"), RelationalKD(),
             SimilarityPreserving("s", "t")]
    sym_t = View(keras.KerasTensor((None, 5)), {"t": keras.KerasTensor((None, 4, 4, 6))})
    sym_s = View(keras.KerasTensor((None, 5)), {"s": keras.KerasTensor((None, 2, 2, 3))})
    for term in terms:
        term.build_term(None if not term.requires_teacher else sym_t, sym_s)

    @tf.function(jit_compile=True)
    def step(z_t, z_s, f_t, f_s, y, w):
        t, s = View(z_t, {"t": f_t}), View(z_s, {"s": f_s})
        return [term.loss(t, s, y, w) for term in terms]

    compiled = step(z_t, z_s, f_t, f_s, y, w)
    t, s = View(z_t, {"t": f_t}), View(z_s, {"s": f_s})
    eager = [term.loss(t, s, y, w) for term in terms]
    np.testing.assert_allclose(np.array(compiled), np.array(eager), rtol=1e-4, atol=1e-6)
