"""Teacher-output caching: epoch time of a distillation step, cached vs uncached.

    python -m benchmarks.caching                       # embedded sample, reference teacher
    python -m benchmarks.caching --train_size=10000 --data=../shared/data/cifar10.npz

Same Distiller (reference ResNet-20 teacher, 71k mobile_cnn student, SoftTargets + a Hint on
stage3), the same deterministic pipeline; the uncached run executes the teacher every step,
the cached one reads its logits and stage3 features from `tfkd.data.cache_teacher`. The
first epoch (tracing) is excluded and the median of the rest is used (robust to other load
on a shared machine); the one-time cost of the cache is reported.
Writes JSON to --output.
"""
import json
import os
import pathlib
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("data", str(REPO / "recipes" / "data" / "cifar10_sample.npz"), "CIFAR-10 .npz.")
flags.DEFINE_string("teacher", str(REPO / "recipes" / "data" / "cifar10_resnet20_teacher.keras"),
                    "Teacher .keras file.")
flags.DEFINE_integer("train_size", 2000, "Training images.")
flags.DEFINE_integer("epochs", 6, "Epochs per mode (the first, tracing, is excluded; the "
                                  "median of the rest is used: the machine is shared).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_string("output", str(REPO / "benchmarks" / "results" / "caching.json"),
                    "JSON output path.")
FLAGS = flags.FLAGS


class EpochTimer:
    def __init__(self):
        import keras

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.start = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                self.times.append(time.perf_counter() - cb.start)

        self.times = []
        self.callback = _CB()


def _distiller(teacher):
    import keras

    import tfkd
    from tfkd import students

    keras.utils.set_random_seed(0)
    student = students.build("mobile_cnn", (32, 32, 3), 10)
    distiller = tfkd.Distiller(student, teacher, knowledge=[
        tfkd.knowledge.SoftTargets(4.0), tfkd.knowledge.Hint("stage3", "stage3")],
        student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from tfkd import data

    splits = data.load(FLAGS.data).subset(FLAGS.train_size)
    x, y = splits.train
    teacher = keras.models.load_model(FLAGS.teacher)
    results = {}
    for mode in ("uncached", "cached"):
        distiller = _distiller(teacher)
        setup = time.perf_counter()
        if mode == "cached":
            ds = data.cache_teacher(distiller, x, y, batch_size=FLAGS.batch_size, seed=0)
        else:
            ds = data.make_dataset(x, y, FLAGS.batch_size, shuffle=True, seed=0)
        setup = time.perf_counter() - setup
        timer = EpochTimer()
        history = distiller.fit(ds, epochs=FLAGS.epochs, verbose=0, callbacks=[timer.callback])
        steady = timer.times[1:] or timer.times
        results[mode] = {"epoch_seconds": [round(t, 3) for t in timer.times],
                         "median_epoch_seconds_after_first": round(float(np.median(steady)), 3),
                         "setup_seconds": round(setup, 3),
                         "final_loss": float(history.history["loss"][-1])}
        print(f"{mode}: epochs {results[mode]['epoch_seconds']} s, setup {setup:.2f} s", flush=True)
    speedup = (results["uncached"]["median_epoch_seconds_after_first"]
               / results["cached"]["median_epoch_seconds_after_first"])
    out = {"benchmark": "teacher-output caching", "data": FLAGS.data, "train_size": len(x),
           "epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size, "teacher": FLAGS.teacher,
           "teacher_params": teacher.count_params(), "student": "mobile_cnn (71k)",
           "knowledge": ["SoftTargets(4)", "Hint(stage3, stage3)"], "results": results,
           "speedup_epoch": round(speedup, 2), "goal": ">= 1.8x",
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "tensorflow": tf.__version__, "keras": keras.__version__}}
    path = pathlib.Path(FLAGS.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"speed-up of a cached epoch: {speedup:.2f}x (goal >= 1.8x); JSON: {path}")


if __name__ == "__main__":
    app.run(main)
