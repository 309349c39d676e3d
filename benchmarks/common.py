"""Helpers shared by the benchmarks: locating ../shared, loading CIFAR-10, writing results."""
import json
import os
import pathlib
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RESULTS = REPO / "benchmarks" / "results"
TEACHER_PATH = SHARED / "models" / "cifar10_resnet20_teacher.keras"


def load_cifar10(split="test", limit=None):
    """Returns (x float32 in [0, 255], y int32) from ../shared/data/cifar10.npz."""
    path = SHARED / "data" / "cifar10.npz"
    with np.load(path) as data:
        x = data[f"x_{split}"]
        y = data[f"y_{split}"]
    if limit:
        x, y = x[:limit], y[:limit]
    return x.astype("float32"), y.astype("int32")


def machine():
    import tensorflow as tf
    import keras

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def write_results(name, payload, table, results_dir=None):
    results_dir = pathlib.Path(results_dir or RESULTS)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, json_path)
    md_path.write_text(table + "\n")
    print(table)
    print(f"\nwrote {json_path} and {md_path}")


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def train_dataset(x, y, batch_size=128, seed=0, augment=True):
    """Shuffled (x, y) batches with random flips and 4-pixel reflect-padded crops.

    Pure tf.data + tf.image (no Keras layer), so that Keras 3 and tf_keras (TF_USE_LEGACY_KERAS)
    scripts train on the same pipeline for the same seed. Every dataset built with the same
    `seed` yields the same stream (epoch k of one run is epoch k of the other), whatever
    ran before it in the process: the flips and crops are stateless ops keyed by a seeded
    `Dataset.random` stream, not unseeded random ops, whose seeds come from a per-process op
    counter (with those, two rows of one seed saw different augmentations, so a row's
    difference from its baseline carried the run-to-run noise of a different data stream).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

    def aug(item, key):
        (image, label), key = item, tf.cast(key % (2 ** 31 - 1), tf.int32)
        image = tf.image.stateless_random_flip_left_right(image, seed=key)
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(image, tf.shape(image) - [8, 8, 0],
                                               seed=key[::-1])
        return image, label

    if augment:
        # Two int64 keys per image; a new, seed-determined sequence each epoch.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, keys)).map(aug, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def cosine_adam(steps, learning_rate):
    """Adam with a cosine decay over `steps` (the recipes' optimizer)."""
    import keras

    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate,
                                                                        max(1, steps)))


def cosine_sgd(steps, learning_rate=0.1, weight_decay=5e-4):
    """SGD, Nesterov momentum 0.9, weight decay, cosine decay over `steps`: the optimizer of
    the CIFAR papers (CRD, DKD, mdistiller), used by the fair KD and scheme benchmarks."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))
    return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True,
                                weight_decay=weight_decay)


def timed_fit(model, data, epochs):
    """`model.fit(data, epochs)`; (wall seconds, process CPU seconds), rounded to 0.1."""
    import time

    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(data, epochs=epochs, verbose=0)
    return round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)


def prepare_run(flags, full):
    """Applies the `--full` budget `full` (flag name -> value) when asked; returns the
    results folder (`--output_dir`), created."""
    import pathlib

    if flags.full:
        for name, value in full.items():
            setattr(flags, name, value)
    out_dir = pathlib.Path(flags.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
