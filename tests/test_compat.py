"""`tfkd._compat`: every private Keras / TF name tfkd uses, one test each, and nowhere else.

Each test runs its function on a tiny real model and checks the numbers or objects it gives;
when a Keras / TensorFlow upgrade breaks one, the failure names the function to fix.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfkd import _compat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Private names that only tfkd/_compat.py may spell.
PRIVATE_NAMES = (
    "keras.src", "_run_through_graph", "_compile_loss", "_compile_metrics", "_nodes_by_depth",
    "_inbound_nodes", "_keras_history", "_get_ops_details", "_symbolic_build",
    "_seed_generators", "_as_serialized_graph", "_flatten_layers", "_direction",
    "_build_shapes_dict", "_distribution_strategy",
)


@contextlib.contextmanager
def checking(name):
    """Turns any failure inside into one that names the compat function and the versions."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - an upgrade may break it in any way
        pytest.fail(
            f"tfkd._compat.{name} no longer works on Keras {keras.__version__} / TensorFlow "
            f"{tf.__version__} (checked on {_compat.CHECKED_ON}): {type(e).__name__}: {e}. "
            f"Fix `{name}` in tfkd/_compat.py.", pytrace=True)


def _dense_model(seed=0, regularizer=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,), name="x")
    h = keras.layers.Dense(4, activation="relu", name="hidden",
                           kernel_regularizer=regularizer)(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(h), name="net")


# -- the trainers' functions ------------------------------------------------------------------
def test_compiled_loss_is_the_compiled_loss_alone():
    # A regulariser's loss lands in `model.losses`: the compiled loss must leave it out.
    model = _dense_model(regularizer=keras.regularizers.L2(100.0))
    assert float(sum(model.losses)) > 1.0
    model.compile(loss="mse")
    y_true = np.array([[1.0, 2.0], [0.0, -1.0]], "float32")
    y_pred = np.array([[0.5, 2.0], [1.0, 1.0]], "float32")
    with checking("compiled_loss"):
        loss = float(_compat.compiled_loss(model, y_true, y_pred))
        weighted = float(_compat.compiled_loss(model, y_true, y_pred,
                                               np.array([1.0, 0.0], "float32")))
    assert loss == pytest.approx(np.mean((y_true - y_pred) ** 2))  # (0.25 + 1 + 4) / 4
    # Keras' sample weighting divides by the batch size: (0.25 / 2) / 2.
    assert weighted == pytest.approx(0.0625)
    uncompiled = _dense_model()
    uncompiled.compile(optimizer="sgd")
    with checking("compiled_loss"):
        assert _compat.compiled_loss(uncompiled, y_true, y_pred) is None


def test_compiled_metrics_is_the_metrics_container():
    model = _dense_model()
    model.compile(loss="mse", metrics=["mae"])
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.zeros((8, 2), "float32")
    model.evaluate(x, y, verbose=0)
    expected = float(np.mean(np.abs(model.predict(x, verbose=0) - y)))
    with checking("compiled_metrics"):
        container = _compat.compiled_metrics(model)
        result = {k: float(v) for k, v in container.result().items()}
    assert result == {"mae": pytest.approx(expected, rel=1e-5)}
    bare = _dense_model()
    bare.compile(loss="mse")
    with checking("compiled_metrics"):
        assert _compat.compiled_metrics(bare) is None


def test_metrics_group_gives_callbacks_the_direction():
    hint = keras.metrics.Mean(name="hint_loss")

    class Trainer(keras.Model):
        def __init__(self, group):
            super().__init__()
            self.group = group
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

        @property
        def metrics(self):
            return [self.group]

    def stops_after(values, group):
        stopper = keras.callbacks.EarlyStopping(monitor="val_hint_loss", patience=0)
        stopper.set_model(Trainer(group))
        stopper.model.stop_training = False  # what fit sets before the first epoch
        stopper.on_train_begin()
        for epoch, value in enumerate(values):
            stopper.on_epoch_end(epoch, {"val_hint_loss": value})
        return stopper.model.stop_training

    with checking("metrics_group"):
        group = _compat.metrics_group([hint], name="loss_trackers")
        assert list(group.metrics) == [hint]
        # "down": a loss that grows stops training, one that shrinks does not.
        assert stops_after([1.0, 2.0], group) is True
        assert stops_after([1.0, 0.5], group) is False
    # Without the group, Keras cannot tell the direction (what metrics_group is for).
    with pytest.raises(ValueError, match="automatically determine"):
        stops_after([1.0, 2.0], keras.metrics.Mean(name="hint_loss"))


def test_symbolic_build_creates_metric_and_optimizer_variables():
    model = _dense_model()
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    assert not model.optimizer.built
    batch = (keras.KerasTensor((None, 3)), keras.KerasTensor((None, 2)))
    with checking("symbolic_build"):
        assert _compat.symbolic_build(model, batch) is True
        assert model.optimizer.built
        # Adam: two slots per trainable variable (4 of them), plus its counters.
        slots = [v for v in model.optimizer.variables if "momentum" in v.path
                 or "velocity" in v.path]
        assert len(slots) == 2 * len(model.trainable_variables) == 8
        assert _compat.compiled_metrics(model).built


# -- functional graphs ------------------------------------------------------------------------
def test_is_functional():
    functional = _dense_model()

    class FromGraph(keras.Model):  # a subclass built from a graph is functional too
        pass

    inputs = keras.Input((3,))
    subclass_of_graph = FromGraph(inputs, keras.layers.Dense(2)(inputs))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with checking("is_functional"):
        got = [_compat.is_functional(m) for m in (functional, subclass_of_graph, Subclassed(),
                                                  sequential, keras.layers.Dense(2))]
    assert got == [True, True, False, False, False]


def test_run_through_graph_reruns_the_layers_on_new_tensors():
    model = _dense_model()
    x = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    called = []

    def call_fn(layer, *args, **kwargs):
        called.append(layer.name)
        return layer(*args, **kwargs)

    # On a tensor that is not a keras.Input: the output of a front end (clone_model refuses).
    front_in = keras.Input((3,))
    front = keras.layers.Rescaling(2.0, name="front")(front_in)
    with checking("run_through_graph"):
        out = _compat.run_through_graph(model, front, call_fn)
        rebuilt = keras.Model(front_in, out)
    assert called == ["hidden", "out"]
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0),
                               model.predict(2.0 * x, verbose=0), rtol=1e-6, atol=1e-6)
    # The layers are shared, not copied.
    assert {id(v) for v in rebuilt.weights} == {id(v) for v in model.weights}


def test_layer_input_producer():
    inputs = keras.Input((6, 6, 1), name="image")
    conv = keras.layers.Conv2D(2, 3, name="conv")
    bn = keras.layers.BatchNormalization(name="bn")
    out = bn(conv(inputs))
    model = keras.Model(inputs, out)
    # A later call (a tap model) must not change the answer: node 0 is the model's graph.
    other = keras.Input((6, 6, 1))
    keras.layers.Rescaling(0.5, name="other")(other)
    _ = bn(keras.layers.Conv2D(2, 3, name="later")(other))
    with checking("layer_input_producer"):
        assert _compat.layer_input_producer(bn) is conv
        assert isinstance(_compat.layer_input_producer(conv), keras.layers.InputLayer)
        assert _compat.layer_input_producer(keras.layers.Dense(2)) is None  # never called
    assert model.get_layer("bn") is bn


# -- input pipelines --------------------------------------------------------------------------
def test_dataset_graph_def_lists_the_pipeline_ops():
    plain = tf.data.Dataset.range(4).map(lambda v: v * 2).batch(2)
    noisy = plain.map(lambda v: tf.cast(v, "float32") + tf.random.uniform((2,)))
    with checking("dataset_graph_def"):
        def ops(ds):
            graph = _compat.dataset_graph_def(ds)
            found = {n.op for n in graph.node}
            for fn in graph.library.function:
                found |= {n.op for n in fn.node_def}
            return found

        plain_ops, noisy_ops = ops(plain), ops(noisy)
    assert {"RangeDataset", "MapDataset", "BatchDatasetV2"} <= plain_ops
    assert "RandomUniform" in noisy_ops and "RandomUniform" not in plain_ops


def test_seed_generators_are_the_layers_own():
    dropout = keras.layers.Dropout(0.5)
    flip = keras.layers.RandomFlip()
    block = keras.Sequential([keras.Input((4, 4, 1)), flip, keras.layers.Conv2D(1, 1)])
    with checking("seed_generators"):
        assert [type(g) for g in _compat.seed_generators(dropout)] == \
            [keras.random.SeedGenerator]
        assert len(_compat.seed_generators(flip)) == 1
        assert _compat.seed_generators(keras.layers.Dense(2)) == []
        assert _compat.seed_generators(block) == []  # the flip's, not the container's


def test_sublayers_reach_every_depth():
    inner = _dense_model()
    outer_in = keras.Input((3,), name="outer_in")
    outer = keras.Model(outer_in, keras.layers.Dense(1, name="head")(inner(outer_in)),
                        name="outer")
    with checking("sublayers"):
        names = [layer.name for layer in _compat.sublayers(outer)]
        plain = _compat.sublayers(keras.layers.Dense(2))
    # Every layer inside, nested ones included, once each, but not the model itself.
    assert sorted(names) == ["head", "hidden", "net", "out", "outer_in", "x"]
    assert plain == []


# -- the door is the only one -----------------------------------------------------------------
def test_private_names_appear_only_in_compat():
    pattern = re.compile("|".join(
        r"\bkeras\.src\b" if name == "keras.src" else rf"(?<![A-Za-z0-9_]){name}\b"
        for name in PRIVATE_NAMES))
    compat = ROOT / "tfkd" / "_compat.py"
    files = sorted((ROOT / "tfkd").rglob("*.py")) + sorted((ROOT / "tflite").rglob("*.py"))
    assert compat in files and len(files) > 20
    offenders = []
    for path in files:
        if path == compat:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in pattern.finditer(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert offenders == [], (
        "private Keras / TF / LiteRT names outside tfkd/_compat.py (add a function there, "
        "with a docstring saying why no public API does it, and call it):\n"
        + "\n".join(offenders))
    # And the compat module really holds them (the scan would be vacuous otherwise).
    text = compat.read_text(encoding="utf-8")
    assert all(pattern.search(line) for line in ("keras.src", "_run_through_graph"))
    assert "_run_through_graph" in text and "_as_serialized_graph" in text


def test_compat_imports_nothing_else_of_tfkd():
    # tfkd.tflite may reach it without pulling in the distillation side.
    import ast

    tree = ast.parse((ROOT / "tfkd" / "_compat.py").read_text(encoding="utf-8"))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [("." * n.level) + (n.module or "") for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)]
    assert [m for m in imported if m.startswith(("tfkd", "."))] == []
