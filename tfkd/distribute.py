"""Multi-worker training of a `tfkd.Distiller`: `fit_multi_worker`.

Keras 3's `Model.fit` cannot run under `tf.distribute.MultiWorkerMirroredStrategy`
(keras-team/keras#20585: "Attempt to convert a value (PerReplica...)"), so `Distiller.fit`
refuses that strategy and points here. `fit_multi_worker` drives the distiller's own
`train_step` with `strategy.run` over `strategy.experimental_distribute_dataset(dataset)`,
which is the loop `tf.distribute` documents for custom training; it adds what `fit` would
give: epochs, metric logs reduced over every replica of every worker, `validation_data`,
callbacks, and checkpoints written by the chief with automatic resume.

It runs under any strategy (MultiWorkerMirroredStrategy, MirroredStrategy, the default one),
so the same script works on one machine and on a cluster.

Set-up of a cluster (one process per worker, the same script everywhere)::

    # worker 0 (the chief: it writes the checkpoints)
    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' python train.py
    # worker 1
    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 1}}' python train.py

`train.py`, runnable as is on one machine too (no TF_CONFIG: a single worker)::

    import keras, numpy as np, tensorflow as tf, tfkd

    # Create the strategy first, before any other TensorFlow call.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    x = np.random.rand(256, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 4, size=(256,))
    global_batch = 16 * strategy.num_replicas_in_sync      # 16 samples per replica
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch,
                                                               drop_remainder=True)

    def net(width, name):
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(width, 3, activation="relu")(inputs)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(4)(h), name=name)

    with strategy.scope():                                   # build AND compile in scope
        distiller = tfkd.Distiller(net(4, "student"), net(16, "teacher"),
                                   knowledge=[tfkd.knowledge.SoftTargets(temperature=4.0)])
        distiller.compile(optimizer="sgd",
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    history = tfkd.distribute.fit_multi_worker(
        distiller, dataset, epochs=3, checkpoint_dir="/shared/ckpt", verbose=0)
    print(history.history["loss"])

(In real use the teacher is a trained model loaded inside the scope; `/shared/ckpt` must be
storage every worker can read: all of them resume from the chief's checkpoint.)

Notes:
- The dataset yields *global* batches; `tf.distribute` splits each one over the replicas
  and, across workers, auto-shards the input (the DATA policy for in-memory datasets). Use
  `drop_remainder=True` or `steps_per_epoch` so that every step has a full batch.
- BatchNormalization in the student uses per-replica batch statistics, as in Keras' `fit`.
- Checkpoints: after each epoch the chief (worker 0, or the task of type "chief") writes
  `<checkpoint_dir>/epoch-NNNN.weights.h5` (`distiller.save_weights`: student, adapters,
  teacher and optimizer state) and `<checkpoint_dir>/tfkd_checkpoint.json` naming it. The
  other workers save too (reading distributed variables may need every worker), but into
  `<checkpoint_dir>/workertemp_<id>`, which they delete at once: the standard
  MultiWorkerMirroredStrategy pattern. A later call with the same `checkpoint_dir` loads the
  latest checkpoint and skips the epochs already done; `epochs` is the total to reach.
"""
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from tfkd import _compat

__all__ = ["fit_multi_worker", "evaluate_multi_worker", "latest_checkpoint"]

_STATE_FILE = "tfkd_checkpoint.json"


def fit_multi_worker(
    distiller,
    dataset,
    epochs=1,
    steps_per_epoch=None,
    strategy=None,
    checkpoint_dir=None,
    callbacks=None,
    validation_data=None,
    verbose=1,
):
    """Trains `distiller` under a `tf.distribute` strategy without Keras' `fit`.

    See the module docstring for the TF_CONFIG set-up and a runnable example.

    Args:
        distiller: a compiled `tfkd.Distiller` (any Keras model whose `train_step` /
            `test_step` follow the Keras contract works). It must be created and compiled
            inside `strategy.scope()`.
        dataset: a `tf.data.Dataset` of global batches `(x, y)` or `(x, y, sample_weight)`,
            or an already distributed dataset.
        epochs: total number of epochs to reach (epochs restored from a checkpoint count).
        steps_per_epoch: steps per epoch; None runs each epoch until the dataset ends. With a
            number, one iterator is kept across epochs and restarted when it runs out.
        strategy: the strategy; default: the one the distiller was created under.
        checkpoint_dir: where the chief saves after each epoch and from where every worker
            resumes. None: no checkpoints.
        callbacks: list of `keras.callbacks.Callback`. Called: on_train_begin/end,
            on_epoch_begin/end (with train and `val_` logs), on_train_batch_begin/end.
            `model.stop_training = True` (e.g. EarlyStopping) ends training after the epoch.
        validation_data: an optional dataset evaluated with `test_step` after each epoch.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch; only the chief prints.

    Returns:
        The `keras.callbacks.History` of the epochs run in this call.
    """
    strategy = strategy or distiller.distribute_strategy
    _check_distiller(distiller, strategy)
    epochs = int(epochs)
    if steps_per_epoch is not None and int(steps_per_epoch) < 1:
        raise ValueError(f"`steps_per_epoch` must be None or >= 1, got {steps_per_epoch}.")
    chief, task_id = _chief_and_task(strategy)

    train_data = _distribute(strategy, dataset)
    val_data = _distribute(strategy, validation_data) if validation_data is not None else None
    with strategy.scope():
        _build_state(distiller, dataset)
    train_function = _make_function(distiller, strategy, distiller.train_step)
    test_function = (
        _make_function(distiller, strategy, distiller.test_step) if val_data is not None else None
    )

    initial_epoch = 0
    if checkpoint_dir is not None:
        initial_epoch = _restore(distiller, checkpoint_dir)

    callback_list = keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=bool(verbose) and chief,
        model=distiller,
        verbose=verbose if chief else 0,
        epochs=epochs,
        steps=steps_per_epoch,
    )
    history = next(c for c in callback_list.callbacks if isinstance(c, keras.callbacks.History))
    distiller.stop_training = False

    callback_list.on_train_begin()
    iterator = iter(train_data) if steps_per_epoch is not None else None
    logs = {}
    for epoch in range(initial_epoch, epochs):
        distiller.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        if steps_per_epoch is None:
            iterator = iter(train_data)
        step, batch_logs, restarted = 0, None, False
        while steps_per_epoch is None or step < steps_per_epoch:
            batch = _next(iterator)
            if batch is None:
                if steps_per_epoch is None or restarted:
                    break
                iterator, restarted = iter(train_data), True  # a finite dataset: go round again
                continue
            restarted = False
            callback_list.on_train_batch_begin(step)
            batch_logs = train_function(batch)
            _raise_if_nonfinite(distiller)
            callback_list.on_train_batch_end(step, batch_logs)
            step += 1
        if step == 0:
            raise ValueError(
                "The training dataset produced no batch. Check that it is not empty and that "
                "its batch size is at most the number of samples (with drop_remainder=True)."
            )
        logs = _to_floats(batch_logs)
        if val_data is not None:
            val_logs = _evaluate(distiller, val_data, test_function)
            logs.update({f"val_{k}": v for k, v in val_logs.items()})
        if checkpoint_dir is not None:
            _save(distiller, checkpoint_dir, epoch + 1, chief, task_id)
        callback_list.on_epoch_end(epoch, logs)
        if distiller.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


def evaluate_multi_worker(distiller, dataset, steps=None, strategy=None):
    """Evaluates `distiller` (its `test_step`) under a strategy; returns a dict of floats.

    Keras 3's `evaluate` fails under MultiWorkerMirroredStrategy like `fit` does
    (keras-team/keras#20585). Every worker must call this on the same dataset of global
    batches; every worker gets the same results, means over all of the data.

    Args:
        distiller: a compiled Distiller created under `strategy.scope()`.
        dataset: a `tf.data.Dataset` of global batches (or a distributed dataset).
        steps: number of batches; None: until the dataset ends.
        strategy: default: the one the distiller was created under.
    """
    strategy = strategy or distiller.distribute_strategy
    _check_distiller(distiller, strategy)
    data = _distribute(strategy, dataset)
    with strategy.scope():
        _build_state(distiller, dataset)
    test_function = _make_function(distiller, strategy, distiller.test_step)
    return _evaluate(distiller, data, test_function, steps)


def latest_checkpoint(checkpoint_dir):
    """Returns `(epochs_done, weights_path)` of the latest checkpoint in `checkpoint_dir`,
    or `(0, None)` when there is none."""
    state_path = os.path.join(checkpoint_dir, _STATE_FILE)
    if not os.path.exists(state_path):
        return 0, None
    with open(state_path) as f:
        state = json.load(f)
    return int(state["epoch"]), os.path.join(checkpoint_dir, state["weights"])


# -- checks -----------------------------------------------------------------------------------
def _check_distiller(distiller, strategy):
    if not isinstance(distiller, keras.Model):
        raise TypeError(
            f"fit_multi_worker expects a compiled tfkd.Distiller, got {type(distiller).__name__}."
        )
    if getattr(distiller, "optimizer", None) is None or not getattr(distiller, "compiled", True):
        raise ValueError(
            "The distiller is not compiled. Call `distiller.compile(optimizer=..., loss=...)` "
            "inside `strategy.scope()` before fit_multi_worker."
        )
    scope_hint = (
        "Create and compile the distiller (and its student, teacher and knowledge terms) "
        "inside the strategy's scope:\n"
        "    with strategy.scope():\n"
        "        distiller = tfkd.Distiller(student, teacher, knowledge=[...])\n"
        "        distiller.compile(optimizer=..., loss=...)\n"
        "and pass the same strategy (or none) to fit_multi_worker."
    )
    foreign = [
        v.path for v in distiller.trainable_variables
        if not strategy.extended.variable_created_in_scope(_tf_variable(v))
    ]
    if foreign:
        raise ValueError(
            f"{len(foreign)} trainable variables of the distiller (e.g. {foreign[0]!r}) were not "
            f"created under the {type(strategy).__name__} used here. {scope_hint}"
        )
    # The optimizer's step counter is created with it, in compile(): a counter created
    # outside the scope means the optimizer (and its slots) would be too.
    if not strategy.extended.variable_created_in_scope(
            _tf_variable(distiller.optimizer.iterations)):
        raise ValueError(
            f"The optimizer was not created under the {type(strategy).__name__} used here: "
            f"compile() ran outside its scope. {scope_hint}"
        )


def _tf_variable(v):
    # A Keras variable wraps the backend tf.Variable (distributed under a strategy); its
    # public `value` is that variable outside a mixed-precision autocast scope.
    return v.value if isinstance(v, keras.Variable) else v


def _chief_and_task(strategy):
    """(is_chief, task_id): worker 0, or the "chief" task, is the chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    if task_type == "chief":
        return True, task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief, f"{task_type}_{task_id}"


# -- building and stepping ----------------------------------------------------------------------
def _build_state(distiller, dataset):
    """Creates every variable (compiled metrics and loss, optimizer slots) before tracing:
    variables cannot be created inside `strategy.run`."""
    if not isinstance(dataset, tf.data.Dataset):  # already distributed: per-replica specs
        if not distiller.optimizer.built:
            distiller.optimizer.build(distiller.trainable_variables)
        return
    spec = dataset.element_spec
    data_batch = tf.nest.map_structure(
        lambda s: keras.KerasTensor(s.shape, dtype=s.dtype.name)
        if isinstance(s, tf.TensorSpec) else s,
        spec,
    )
    # What Keras' fit does before its loop; without it (another Keras), the optimizer alone.
    if not _compat.symbolic_build(distiller, data_batch) and not distiller.optimizer.built:
        distiller.optimizer.build(distiller.trainable_variables)


def _distribute(strategy, dataset):
    if isinstance(dataset, tf.distribute.DistributedDataset):
        return dataset
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"fit_multi_worker takes a tf.data.Dataset of global batches, got "
            f"{type(dataset).__name__}. Wrap arrays with "
            "tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch_size)."
        )
    return strategy.experimental_distribute_dataset(dataset)


def _make_function(distiller, strategy, step_fn):
    if getattr(distiller, "jit_compile", False) is True:
        step_fn = tf.function(step_fn, jit_compile=True, reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def run(batch):
        strategy.run(step_fn, args=(batch,))
        # Read the metrics in cross-replica context: their SyncOnRead variables are summed
        # over all replicas of all workers, so `loss` etc. are means over the global data so
        # far in this epoch (the per-replica values returned by the step are local only).
        return distiller.get_metrics_result()

    return run


def _evaluate(distiller, data, test_function, steps=None):
    distiller.reset_metrics()
    logs, step = None, 0
    for batch in data:
        if steps is not None and step >= steps:
            break
        logs = test_function(batch)
        _raise_if_nonfinite(distiller)
        step += 1
    if logs is None:
        raise ValueError("The validation dataset produced no batch.")
    return _to_floats(logs)


def _raise_if_nonfinite(distiller):
    """The trainers' non-finite guard, raised from the host after a step as `fit` does.

    `fit` calls it itself; this loop replaces `fit`, so it calls it too (FloatingPointError).
    """
    check = getattr(distiller, "raise_if_nonfinite", None)
    if check is not None:
        check()


def _next(iterator):
    try:
        return next(iterator)
    except (StopIteration, tf.errors.OutOfRangeError):
        return None


def _to_floats(logs):
    return {k: float(np.asarray(v)) for k, v in (logs or {}).items()}


# -- checkpoints ------------------------------------------------------------------------------
def _restore(distiller, checkpoint_dir):
    epoch, path = latest_checkpoint(checkpoint_dir)
    if path is None:
        return 0
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{os.path.join(checkpoint_dir, _STATE_FILE)} names {path}, which does not exist. "
            "Remove the stale json file to start from scratch."
        )
    distiller.load_weights(path)
    return epoch


def _save(distiller, checkpoint_dir, epoch, chief, task_id):
    if not chief:
        # Every worker takes part in the save, the non-chief ones into a throw-away folder.
        temp_dir = os.path.join(checkpoint_dir, f"workertemp_{task_id}")
        os.makedirs(temp_dir, exist_ok=True)
        try:
            distiller.save_weights(os.path.join(temp_dir, "epoch.weights.h5"))
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
        return
    os.makedirs(checkpoint_dir, exist_ok=True)
    _, previous = latest_checkpoint(checkpoint_dir)
    name = f"epoch-{epoch:04d}.weights.h5"
    distiller.save_weights(os.path.join(checkpoint_dir, name))
    state_path = os.path.join(checkpoint_dir, _STATE_FILE)
    with open(state_path + ".tmp", "w") as f:
        json.dump({"epoch": epoch, "weights": name}, f)
    os.replace(state_path + ".tmp", state_path)  # atomic: a crash leaves the old state
    if previous is not None and os.path.basename(previous) != name and os.path.exists(previous):
        os.remove(previous)
