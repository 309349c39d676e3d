"""Entry script for tests/test_distribute.py: runs in its own process, prints one JSON line.

Distribution must be configured before TensorFlow initialises its devices (logical CPU
devices, TF_CONFIG for MultiWorkerMirroredStrategy), so each scenario gets a fresh process:

    python distribute_worker.py mirrored <out.json> <workdir>
    TF_CONFIG=... python distribute_worker.py worker <out.json> <workdir>

Every run uses the same data (the first 128 MNIST training images when the shared copy is
there, else fixed random images), the same seeded initial weights, SGD and no shuffling, so
a distributed run can be compared with a single-device run of the same global batch.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODE, OUT, WORKDIR = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

import tensorflow as tf  # noqa: E402

if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    STRATEGY = None
else:
    # MultiWorkerMirroredStrategy must exist before any other TensorFlow op runs.
    STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfkd  # noqa: E402
import tfkd.distribute  # noqa: E402

GLOBAL_BATCH = 32
SAMPLES = 128  # 4 steps per epoch
EPOCHS = 2
LR = 0.1


def knowledge_terms():
    # Hint brings a trainable adapter, which must be mirrored like the student.
    return [tfkd.knowledge.SoftTargets(temperature=4.0),
            tfkd.knowledge.Hint("feat", "feat", weight=0.5)]


def data():
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"
    with np.load(path) as f:
        x, y = f["x_train"][:SAMPLES], f["y_train"][:SAMPLES]
    return (x.astype("float32") / 255.0)[..., None], y.astype("int32")


def dataset():
    x, y = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def net(width, name):
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(width, 3, strides=2, activation="relu", name="feat")(inputs)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name=name)


def make_distiller(seed=0, momentum=0.0):
    keras.utils.set_random_seed(seed)
    teacher, student = net(8, "teacher"), net(4, "student")
    distiller = tfkd.Distiller(student, teacher, knowledge=knowledge_terms(),
                               student_loss_weight=0.5)
    distiller.compile(
        optimizer=keras.optimizers.SGD(LR, momentum=momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return distiller


def weights(distiller):
    return [np.asarray(w) for w in distiller.get_weights()]


def max_diff(a, b):
    return float(max(np.max(np.abs(u - v)) for u, v in zip(a, b)))


def single_device(initial, momentum=0.0):
    """Reference: Keras' fit on one device, full global batch, same initial weights."""
    with tf.device("/cpu:0"):
        distiller = make_distiller(momentum=momentum)
        distiller.set_weights(initial)
        history = distiller.fit(dataset(), epochs=EPOCHS, shuffle=False, verbose=0)
        history.history["final_eval"] = distiller.evaluate(dataset(), verbose=0,
                                                           return_dict=True)
    return weights(distiller), history.history


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.begun, self.batches = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def run_mirrored():
    result = {"terms": [t.name for t in make_distiller().knowledge]}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result["replicas"] = strategy.num_replicas_in_sync
    initial = weights(make_distiller())
    ref_w, ref_h = single_device(initial)
    result["ref_loss"] = ref_h["loss"]
    result["ref_eval"] = ref_h["final_eval"]

    # 1. Keras' fit under MirroredStrategy on 2 logical CPUs.
    with strategy.scope():
        d = make_distiller()
        d.set_weights(initial)
    h = d.fit(dataset(), epochs=EPOCHS, shuffle=False, verbose=0)
    w = weights(d)
    result["fit"] = {"max_diff": max_diff(w, ref_w), "loss": h.history["loss"],
                     "moved": max_diff(w, initial), "history_keys": sorted(h.history)}

    # fit_multi_worker under the same strategy (the single-worker path).
    with strategy.scope():
        d = make_distiller()
        d.set_weights(initial)
    h = tfkd.distribute.fit_multi_worker(d, dataset(), epochs=EPOCHS, verbose=1,
                                         validation_data=dataset())
    result["fmw"] = {"max_diff": max_diff(weights(d), ref_w), "loss": h.history["loss"],
                     "history": h.history}

    # steps_per_epoch longer than the data: the iterator goes round again.
    with strategy.scope():
        d = make_distiller()
    counter = EpochRecorder()
    tfkd.distribute.fit_multi_worker(d, dataset(), epochs=1, steps_per_epoch=6,
                                     callbacks=[counter], verbose=0)
    result["steps_per_epoch_batches"] = counter.batches

    # 4. Resume: epochs=1, then a fresh process-like distiller with epochs=2, vs. 2 epochs
    # straight through. Momentum makes the optimizer state matter.
    ref_w, _ = single_device(initial, momentum=0.9)
    ckpt = WORKDIR / "resume_ckpt"
    with strategy.scope():
        d = make_distiller(momentum=0.9)
        d.set_weights(initial)
    first = EpochRecorder()
    h1 = tfkd.distribute.fit_multi_worker(d, dataset(), epochs=1, checkpoint_dir=str(ckpt),
                                          callbacks=[first], verbose=0)
    files_after_1 = sorted(os.listdir(ckpt))
    with strategy.scope():
        d = make_distiller(seed=1, momentum=0.9)  # other weights: the checkpoint must win
    second = EpochRecorder()
    h2 = tfkd.distribute.fit_multi_worker(d, dataset(), epochs=2, checkpoint_dir=str(ckpt),
                                          callbacks=[second], verbose=0)
    result["resume"] = {
        "first_epochs": first.begun, "second_epochs": second.begun,
        "second_batches": second.batches, "h1_epochs": h1.epoch, "h2_epochs": h2.epoch,
        "files_after_1": files_after_1, "files_after_2": sorted(os.listdir(ckpt)),
        "iterations": int(d.optimizer.iterations.numpy()),
        "max_diff": max_diff(weights(d), ref_w),
    }

    # Created outside the scope: a clear error.
    d = make_distiller()
    try:
        tfkd.distribute.fit_multi_worker(d, dataset(), strategy=strategy, verbose=0)
        result["scope_error"] = None
    except ValueError as e:
        result["scope_error"] = str(e)
    return result


def run_worker():
    strategy = STRATEGY
    resolver = strategy.cluster_resolver
    result = {"task_id": resolver.task_id, "replicas": strategy.num_replicas_in_sync,
              "is_chief": tfkd.distribute._chief_and_task(strategy)[0]}
    with strategy.scope():
        d = make_distiller()
    initial = weights(d)

    # 3. Keras' fit under MultiWorkerMirroredStrategy: refused with a pointer.
    try:
        d.fit(dataset(), epochs=1, verbose=0)
        result["fit_error"] = None
    except RuntimeError as e:
        result["fit_error"] = str(e)

    result["eval_before"] = tfkd.distribute.evaluate_multi_worker(d, dataset())
    ckpt = WORKDIR / "mw_ckpt"
    h = tfkd.distribute.fit_multi_worker(d, dataset(), epochs=EPOCHS, validation_data=dataset(),
                                         checkpoint_dir=str(ckpt), verbose=0)
    w = weights(d)
    result["loss"] = h.history["loss"]
    result["val_loss"] = h.history["val_loss"]
    result["metrics"] = sorted(h.history)
    np.savez(WORKDIR / f"weights_{resolver.task_id}.npz", *w)
    if resolver.task_id == 0:
        with tf.device("/cpu:0"):
            ref = make_distiller()
            ref.set_weights(initial)
            result["ref_eval_before"] = ref.evaluate(dataset(), verbose=0, return_dict=True)
        ref_w, ref_h = single_device(initial)
        result["ref_loss"] = ref_h["loss"]
        result["ref_eval"] = ref_h["final_eval"]
        result["max_diff"] = max_diff(w, ref_w)
        result["moved"] = max_diff(w, initial)
    return result


if __name__ == "__main__":
    out = run_mirrored() if MODE == "mirrored" else run_worker()
    OUT.write_text(json.dumps(out))
