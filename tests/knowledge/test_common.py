"""The contract every registered term follows, checked for each term of the registry.

Nothing here lists terms: every test runs over `tfkd.knowledge.available()`, and each term
says in its class how to build a working instance (`example_args`) and what it reads
(`example_inputs` / `example_views`). A new term is covered as soon as it is defined.
"""
import doctest
import gc
import importlib
import inspect
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkd.knowledge as knowledge
from tfkd.knowledge import Knowledge, View, base

TERMS = knowledge.available()
CLASSES = list(TERMS.values())
IDS = list(TERMS)
B = 6  # the example batch: >= 3 samples, so relation terms have triplets
WEIGHTS = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 1.0], "float32")


def by_class(params=CLASSES):
    return pytest.mark.parametrize("cls", params, ids=lambda c: c.default_name)


def make(cls, **overrides):
    return cls(**{**cls.example_args, **overrides})


def symbolic(view):
    spec = lambda x: keras.KerasTensor((None,) + np.shape(x)[1:], dtype="float32")
    return View(keras.tree.map_structure(spec, view.outputs),
                {name: spec(x) for name, x in view.features.items()})


def take(view, index):
    pick = lambda x: np.asarray(x)[index]
    return View(keras.tree.map_structure(pick, view.outputs),
                {name: pick(x) for name, x in view.features.items()})


def take_labels(y, index):
    """The labels of samples `index`: an array, or a dict of arrays (the detection targets)."""
    return keras.tree.map_structure(lambda v: np.asarray(v)[index], y)


def example(cls, batch=B, **overrides):
    """A built instance of `cls` and its example inputs (teacher is None if not needed)."""
    teacher, student, y = cls.example_views(batch=batch)
    teacher = teacher if cls.requires_teacher else None
    term = make(cls, **overrides)
    term.build_term(None if teacher is None else symbolic(teacher), symbolic(student))
    return term, teacher, student, y


def traced(term, jit_compile):
    """term.loss inside a tf.function, the arrays of the views passed in as tensors."""

    @tf.function(jit_compile=jit_compile)
    def run(t_out, t_feat, s_out, s_feat, y, w):
        teacher = None if t_out is None else View(t_out, t_feat)
        return term.loss(teacher, View(s_out, s_feat), y, w)

    def call(teacher, student, y, w=None):
        t = (None, None) if teacher is None else (teacher.outputs, teacher.features)
        return run(*t, student.outputs, student.features, y, w)

    return call


def check_complete(cls):
    """What the contract tests need from a registered term; AssertionError says what is missing."""
    name = cls.__name__
    assert issubclass(cls, Knowledge), f"{name} is not a tfkd.knowledge.Knowledge"
    assert isinstance(cls.example_args, dict), (
        f"{name}.example_args must be a dict of constructor arguments of a working instance "
        f"(got {cls.example_args!r})")
    params = inspect.signature(cls.__init__).parameters
    for arg in ("weight", "name"):
        assert arg in params, f"{name}.__init__ must accept `{arg}`"
    unknown = set(cls.example_args) - set(params)
    assert not unknown, f"{name}.example_args names arguments {unknown} that __init__ lacks"
    views = cls.example_views(batch=B)
    assert len(views) == 3 and all(isinstance(v, View) for v in views[:2]), (
        f"{name}.example_views must return (teacher View, student View, y_true)")
    assert base.snake_case(cls.default_name) == cls.default_name
    doc = cls.__doc__ or ""
    assert doc.strip() and ">>>" in doc, f"{name} needs a docstring with a runnable example"
    term, teacher, student, y = example(cls)
    value = float(term.loss(teacher, student, y, WEIGHTS))
    assert np.isfinite(value), f"{name} gives a non-finite loss on its example inputs"


@by_class()
def test_registered_term_declares_what_the_contract_tests_need(cls):
    check_complete(cls)
    assert getattr(knowledge, cls.__name__) is cls and cls.__name__ in knowledge.__all__


def test_the_completeness_check_catches_a_term_without_example_args():
    class Bare(knowledge.SoftTargets, register=False):
        """A term that forgot its example arguments.

        >>> 1
        1
        """

        example_args = None

    with pytest.raises(AssertionError, match="example_args must be a dict"):
        check_complete(Bare)


def test_the_registry_holds_every_public_term():
    assert len(CLASSES) >= 10 and len(set(CLASSES)) == len(CLASSES)
    exported = {getattr(knowledge, n) for n in knowledge.__all__}
    terms = {c for c in exported if isinstance(c, type) and issubclass(c, Knowledge)}
    # KerasDistillationLoss is built from a Keras object, not by name (register=False).
    assert terms - set(CLASSES) == {knowledge.KerasDistillationLoss, Knowledge}
    assert knowledge.BinarySoftTargets in CLASSES


@by_class()
def test_config_round_trip(cls):
    term, teacher, student, y = example(cls, weight=0.7, name="custom")
    config = keras.saving.serialize_keras_object(term)
    assert config["registered_name"] == f"tfkd>{cls.__name__}"
    for restored in (keras.saving.deserialize_keras_object(config), knowledge.get(config)):
        assert type(restored) is cls
        assert restored.get_config() == term.get_config()
        assert restored.name == "custom" and restored.weight == 0.7
        assert restored.teacher_features == term.teacher_features
        assert restored.student_features == term.student_features
        # Same config and same (adapter) weights: the same numbers.
        restored.build_term(None if teacher is None else symbolic(teacher), symbolic(student))
        restored.set_weights(term.get_weights())
        np.testing.assert_allclose(float(restored.loss(teacher, student, y, WEIGHTS)),
                                   float(term.loss(teacher, student, y, WEIGHTS)), rtol=1e-6)
    assert "trainable" not in term.get_config() and "dtype" not in term.get_config()


@by_class()
def test_spec_builds_the_example_term(cls):
    args = ",".join(f"{k}={v!r}" for k, v in cls.example_args.items())
    for name in (cls.default_name, cls.__name__, *knowledge.base.names_of(cls)):
        term = knowledge.get(f"{name}:{args}" if args else name)
        assert type(term) is cls
        assert term.get_config() == make(cls).get_config()


@by_class()
def test_default_name_is_the_metric_prefix_and_a_registry_name(cls):
    assert make(cls).name == cls.default_name
    assert TERMS[cls.default_name] is cls
    for name in (cls.__name__, base.snake_case(cls.__name__), *cls.aliases):
        assert base.lookup(name) is cls


@by_class()
def test_sample_weights(cls):
    term, teacher, student, y = example(cls)
    per_sample = np.asarray(term.compute(teacher, student, y))
    weighted = float(term.loss(teacher, student, y, WEIGHTS))
    assert float(term.loss(teacher, student, y, np.ones(B, "float32"))) == pytest.approx(
        float(term.loss(teacher, student, y)), rel=1e-5)
    if per_sample.ndim == 1:
        # Keras' reduction: sum(loss_i * w_i) / batch; and each sample's loss is its own.
        assert per_sample.shape == (B,)
        assert weighted == pytest.approx(float(np.sum(per_sample * WEIGHTS) / B), rel=1e-5)
        head = np.arange(3)
        t3 = None if teacher is None else take(teacher, head)
        np.testing.assert_allclose(
            np.asarray(term.compute(t3, take(student, head), take_labels(y, head))),
            per_sample[head], rtol=1e-5, atol=1e-7)
    else:
        # A batch-level term: a sample of weight 0 leaves no trace.
        assert per_sample.shape == ()
        keep = np.flatnonzero(WEIGHTS)
        tk = None if teacher is None else take(teacher, keep)
        without = float(term.loss(tk, take(student, keep), take_labels(y, keep),
                                  WEIGHTS[keep]))
        assert weighted == pytest.approx(without, rel=1e-5, abs=1e-7)
    assert weighted != pytest.approx(float(term.loss(teacher, student, y)), rel=1e-3)


@by_class()
def test_compiles_with_xla(cls):
    """Each term traces under tf.function(jit_compile=True), as the Distiller may run it."""
    term, teacher, student, y = example(cls)

    compiled = float(traced(term, jit_compile=True)(teacher, student, y, WEIGHTS))
    assert compiled == pytest.approx(float(term.loss(teacher, student, y, WEIGHTS)),
                                     rel=1e-4, abs=1e-6)


@by_class()
def test_bad_weight_rejected(cls):
    with pytest.raises(ValueError, match=f"{cls.__name__}: `weight` must be a finite number >= 0"):
        make(cls, weight=-1.0)
    with pytest.raises(TypeError, match=f"{cls.__name__}: `weight` must be a number, got 'x'"):
        make(cls, weight="x")


def numeric_arguments(cls):
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params
            if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)]


@by_class()
def test_numeric_arguments_name_the_class_and_the_argument(cls):
    names = numeric_arguments(cls)
    assert "weight" in names
    for arg in names:
        for bad in ("four", None, True, [1.0]):
            match = re.escape(f"{cls.__name__}: `{arg}` must be a number, got {bad!r}")
            with pytest.raises(TypeError, match=match):
                make(cls, **{arg: bad})
        # NumPy scalars are numbers, stored as Python floats (the config stays JSON).
        default = inspect.signature(cls.__init__).parameters[arg].default
        value = make(cls, **{arg: np.float32(default)}).get_config()[arg]
        assert type(value) is float and value == pytest.approx(default)


# Terms whose labels are class indices. The detection terms read the anchor encoder's dict
# of targets instead (tests/knowledge/test_detection.py checks their label errors).
LABELLED = [c for c in CLASSES if c.requires_labels and c.example_inputs != "detection"]


def test_some_terms_use_labels():
    assert {c.__name__ for c in LABELLED} >= {"DecoupledKD", "TeacherFree", "LabelSmoothedKD"}


@by_class(LABELLED)
def test_labels_outside_the_classes_raise_and_poison_the_loss(cls):
    term, teacher, student, y = example(cls)
    assert y.ndim == 1 and np.issubdtype(y.dtype, np.integer), (
        f"{cls.__name__}'s example labels are not class indices: extend this test")
    k = np.shape(student.output(getattr(term, "output_selector", None)))[-1]
    message = rf"{cls.__name__}: label\]? \[?{k}\]? \[?is outside the valid range \[0, {k}\)"
    bad = y.copy()
    bad[2] = k  # one past the last class: its one-hot row would be all zeros
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        term.loss(teacher, student, bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):  # graph, no XLA
        traced(term, jit_compile=False)(teacher, student, bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{cls.__name__}: label\]? \[?-1"):
        term.loss(teacher, student, np.where(np.arange(B) == 0, -1, y))

    # XLA drops assertions: the loss is NaN instead, for the trainer's non-finite guard. A
    # weight of 0 on the bad sample does not hide it.
    compiled = traced(term, jit_compile=True)
    weights = np.where(np.arange(B) == 2, 0.0, 1.0).astype("float32")
    assert np.isnan(float(compiled(teacher, student, bad, weights)))
    assert np.isfinite(float(compiled(teacher, student, y, weights)))


def test_label_check_accepts_one_hot_and_column_labels():
    one_hot = base.labels_to_one_hot(np.eye(4, dtype="float32")[[3, 0]], 4, "T")
    np.testing.assert_array_equal(np.asarray(one_hot), np.eye(4)[[3, 0]])
    column = base.labels_to_one_hot(np.array([[3], [1]]), 4, "T")
    np.testing.assert_array_equal(np.asarray(column), np.eye(4)[[3, 1]])


MODULES = sorted({cls.__module__ for cls in CLASSES}
                 | {"tfkd.knowledge.base", "tfkd.knowledge.registry", "tfkd.knowledge.keras_compat"})


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_public_names():
    for name in knowledge.__all__:
        assert hasattr(knowledge, name), name
    for name in ("get", "get_list", "available", "describe", "as_knowledge"):
        assert callable(getattr(knowledge, name))


# ----- one term, one owner ------------------------------------------------------------------


class Owner:
    def __init__(self, name):
        self.name = name


def test_claim_by_the_same_owner_is_a_no_op():
    term, first = knowledge.SoftTargets(), Owner("first")
    term.claim(first)
    term.claim(first)


def test_claim_by_a_second_live_owner_names_the_term_the_owner_and_the_fix():
    term, first, second = knowledge.SoftTargets(name="kd"), Owner("distiller_a"), Owner("b")
    term.claim(first)
    with pytest.raises(ValueError, match=r"SoftTargets 'kd' already belongs to 'distiller_a' "
                                         r"\(Owner\).*type\(term\)\.from_config\(term\.get_config"):
        term.claim(second)
    # The fix the message gives works: a fresh copy of the term is free.
    fresh = type(term).from_config(term.get_config())
    fresh.claim(second)
    assert fresh.get_config() == term.get_config()


def test_inherit_from_moves_the_ownership():
    term, first, second, third = knowledge.Hint("s", "t"), Owner("a"), Owner("b"), Owner("c")
    term.claim(first)
    term.claim(second, inherit_from=first)
    with pytest.raises(ValueError, match="already belongs to 'b'"):
        term.claim(first)  # the first owner gave the term away
    with pytest.raises(ValueError, match="already belongs to 'b'"):
        term.claim(third, inherit_from=first)  # inheriting from a non-owner moves nothing


def test_a_garbage_collected_owner_frees_the_term():
    term, first, second = knowledge.SoftTargets(), Owner("a"), Owner("b")
    term.claim(first)
    del first
    gc.collect()
    term.claim(second)
    with pytest.raises(ValueError, match="already belongs to 'b'"):
        term.claim(Owner("c"))


def test_an_owner_without_weak_references_is_kept():
    term, first = knowledge.SoftTargets(), object()
    term.claim(first)
    with pytest.raises(ValueError, match=r"already belongs to 'object' \(object\)"):
        term.claim(Owner("b"))
