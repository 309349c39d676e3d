"""Every touch of a private Keras / TensorFlow / LiteRT name, in one place.

tfkd is built on public APIs; where none does the job, the private name is reached from here
and nowhere else (`tests/test_compat.py` checks that, and that each touch still works). Each
function says why no public API does it. Checked on Keras 3.15, TensorFlow 2.21,
ai-edge-litert 2.x; when an upgrade breaks one, the test of that function fails with a
message naming it, and only this module needs the fix.
"""
import keras

CHECKED_ON = {"keras": "3.15", "tensorflow": "2.21"}


class CompatError(RuntimeError):
    """A private API tfkd relies on is missing or changed in the installed Keras / TF."""


def _require(obj, attr, what):
    if not hasattr(obj, attr):
        raise CompatError(
            f"{what}: `{type(obj).__name__}.{attr}` is missing in Keras {keras.__version__} "
            f"(tfkd was checked on Keras {CHECKED_ON['keras']}). Update tfkd/_compat.py.")
    return getattr(obj, attr)


# -- trainers (tfkd/training.py) -------------------------------------------------------------
def compiled_loss(model, y_true, y_pred, sample_weight=None):
    """The loss given to `model.compile`, on one batch (scaled for the replicas, as Keras does).

    Public `Model.compute_loss` also adds every sublayer's `losses`, which would drag in the
    frozen teacher's regularisers; the compiled loss alone is only reachable privately.
    """
    fn = _require(model, "_compile_loss", "compiled_loss")
    if fn is None:
        return None
    return fn(y_true, y_pred, sample_weight)


def compiled_metrics(model):
    """The `CompileMetrics` container built by `compile(metrics=...)`, or None.

    A subclass that overrides the `metrics` property must list it itself; Keras keeps it
    in a private attribute only.
    """
    return getattr(model, "_compile_metrics", None)


def metrics_group(metrics, name, direction="down"):
    """A list of metrics that Keras' callbacks look into for the monitored metric's direction.

    `ModelCheckpoint` / `EarlyStopping(monitor="val_hint_loss")` find a metric's direction
    only inside `CompileMetrics` or `MetricsList` (keras.callbacks.MonitorCallback), and read
    it from the private `_direction`; there is no public way to declare it. `result()` gives
    {metric name: value}, so each metric is logged under its own name.
    """
    from keras.src.trainers import compile_utils

    class _Group(compile_utils.MetricsList):
        def result(self):
            return {m.name: m.result() for m in self.metrics}

    group = _Group(list(metrics), name=name)
    if direction is not None:
        for metric in metrics:
            metric._direction = direction
    return group


def supports_no_merge_call():
    """Whether the current strategy's optimizers update without `merge_call` (then a plain
    `tf.cond` may hold the update). TensorFlow exposes this only under `tf.__internal__`,
    and keras' LossScaleOptimizer relies on the same function."""
    import tensorflow as tf

    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def symbolic_build(model, data_batch):
    """Creates every variable (compiled metrics, loss, optimizer slots) as `fit` does first.

    `tfkd.distribute.fit_multi_worker` drives `strategy.run(train_step)` itself (Keras'
    `fit` cannot run under MultiWorkerMirroredStrategy, keras#20585), and variables cannot be
    created inside `strategy.run`; Keras' own pre-build is `Trainer._symbolic_build`.
    """
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return False
    build(data_batch=data_batch)
    return True


# -- functional graphs (tfkd/taps.py, tfkd/quantization/transform.py, schemes) ---------------
def is_functional(model):
    """True for a functional model (`keras.Model(inputs, outputs)` or a subclass of one).

    Keras exports no `Functional` class and no predicate for it; a functional model is what
    has a graph of layers that can be reached from outside (Sequential is checked apart,
    through the public `keras.Sequential`).
    """
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def run_through_graph(model, inputs, call_fn):
    """Re-runs a functional model's layers on `inputs`, calling `call_fn(layer, *args, **kw)`.

    This is what `keras.models.clone_model` does inside; calling it directly keeps the result
    connected to `inputs` even when they are not `keras.Input` tensors (a nested model
    called on the output of a front end), where clone_model's rebuild fails with "not
    connected to inputs". `clone_model(call_function=...)` is public but cannot do that.
    """
    run = _require(model, "_run_through_graph", "run_through_graph")
    return run(inputs, operation_fn=lambda layer: layer, call_fn=call_fn)


def layer_input_producer(layer):
    """The layer whose output is the (first) input of `layer`'s first call, or None.

    Node 0 is the call that built the functional model the layer belongs to (tap models add
    later nodes). The public `layer.input` gives that tensor, but which layer produced it is
    only in the tensor's private `_keras_history`; a model's `get_config()` names it too,
    but needs the model, not the layer. None when the layer was never called in a graph.
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if not nodes or not nodes[0].input_tensors:
        return None
    history = getattr(nodes[0].input_tensors[0], "_keras_history", None)
    return getattr(history, "operation", None)


# -- input pipelines (tfkd/data.py) ----------------------------------------------------------
def dataset_graph_def(dataset):
    """The `tf.compat.v1.GraphDef` of a `tf.data.Dataset`'s pipeline (functions included).

    tf.data has no public way to list the ops of a pipeline; `tfkd.data.random_ops` looks
    for random ops there to refuse caching a random pipeline.
    """
    from tensorflow.core.framework import graph_pb2

    serialize = getattr(dataset, "_as_serialized_graph", None)
    if serialize is None:
        import tensorflow as tf

        raise CompatError(
            f"dataset_graph_def: `{type(dataset).__name__}._as_serialized_graph` is missing in "
            f"TensorFlow {tf.__version__} (tfkd was checked on TensorFlow "
            f"{CHECKED_ON['tensorflow']}). Update tfkd/_compat.py.")
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(serialize().numpy())
    return graph


def seed_generators(layer):
    """The `keras.random.SeedGenerator`s a layer owns itself (not those of its sublayers).

    The public `Layer.variables` includes seed states, but also every sublayer's, so it
    cannot tell which layer is the random one; Keras tracks a layer's own generators in a
    private list.
    """
    return list(getattr(layer, "_seed_generators", None) or [])


def sublayers(layer):
    """Every layer inside `layer` at every depth (itself excluded), in Keras' order.

    `Model.layers` is public but lists the direct children of a model only, and a plain
    `Layer` has no public list of its sublayers at all.
    """
    flatten = _require(layer, "_flatten_layers", "sublayers")
    return list(flatten(include_self=False, recursive=True))
