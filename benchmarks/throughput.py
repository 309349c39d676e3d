"""Training throughput and peak memory of a distillation step.

Compares, on CIFAR-sized inputs with the reference ResNet-20 teacher and one student of
< 100k parameters:
  (a) tfkd.Distiller with SoftTargets + one Hint (non-finite guard on, the default),
  (a0) the same with `check_numerics=False` (the guard's cost is (a) / (a0)),
  (b) keras.distillation.Distiller with LogitsDistillation(KLDivergence) + FeatureDistillation
      on the same layers (the student has a layer of the teacher's feature shape, since Keras'
      FeatureDistillation has no adapter),
  (c) the floor: a plain student train step plus a teacher inference pass.
Each variant runs in its own subprocess (peak RSS is per process), repeated and interleaved
so that background load hits every variant alike; the median is reported.

    python benchmarks/throughput.py --steps 40 --repeats 3
"""
import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("steps", 40, "Timed steps per run (after one warm-up epoch).")
flags.DEFINE_integer("repeats", 3, "Interleaved repetitions of each variant.")
flags.DEFINE_enum("variant", None, ["tfkd", "tfkd_unguarded", "keras", "floor"],
                  "Internal: run one variant.")
flags.DEFINE_bool("jit_compile", False, "XLA (off by default: slower on CPU hosts).")

VARIANTS = ["tfkd", "tfkd_unguarded", "keras", "floor"]


def build_student():
    """A depthwise-separable CIFAR student whose `feat` layer has the teacher's stage3 shape."""
    import keras

    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Rescaling(1 / 255.0)(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU(6.0)(h)
    for filters, stride in ((32, 2), (32, 1), (64, 2), (64, 1)):
        h = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU(6.0)(h)
        h = keras.layers.Conv2D(filters, 1, use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU(6.0, name="feat" if (filters, stride) == (64, 1) else None)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="student")


def run_variant(variant):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    x, y = common.load_cifar10("test")
    steps, batch = FLAGS.steps, FLAGS.batch_size
    n = steps * batch
    x, y = x[:n], y[:n]
    teacher = keras.models.load_model(common.TEACHER_PATH)
    student = build_student()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
    ds = ds.cache().prefetch(tf.data.AUTOTUNE)

    if variant in ("tfkd", "tfkd_unguarded"):
        import tfkd

        model = tfkd.Distiller(student, teacher, knowledge=[
            tfkd.knowledge.SoftTargets(temperature=4.0),
            tfkd.knowledge.Hint("feat", "stage3"),
        ], student_loss_weight=0.5, check_numerics=variant == "tfkd")
    elif variant == "keras":
        model = keras.distillation.Distiller(
            teacher=teacher, student=student,
            distillation_losses=[
                keras.distillation.LogitsDistillation(temperature=4.0,
                                                      loss=keras.losses.KLDivergence()),
                keras.distillation.FeatureDistillation(loss="mse", teacher_layer_name="stage3",
                                                       student_layer_name="feat"),
            ],
            distillation_loss_weights=[1.0, 1.0], student_loss_weight=0.5,
        )
    else:
        model = student

    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), ce, jit_compile=FLAGS.jit_compile)
    teacher_step = tf.function(lambda xb: teacher(xb, training=False),
                               jit_compile=FLAGS.jit_compile)
    times, cpu = {}, {}

    # Wall time is bimodal on shared 2-core hosts (a run gets one core or two); process CPU
    # time per step is the stable figure, both are reported.
    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            times[epoch], cpu[epoch] = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            times[epoch] = time.perf_counter() - times[epoch]
            cpu[epoch] = time.process_time() - cpu[epoch]

    model.fit(ds, epochs=2, verbose=0, callbacks=[Timer()])  # epoch 0 traces
    seconds, cpu_seconds = times[1], cpu[1]
    if variant == "floor":
        for xb, _ in ds.take(1):
            teacher_step(xb)  # trace
        start, start_cpu = time.perf_counter(), time.process_time()
        for xb, _ in ds:
            teacher_step(xb).numpy()
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - start_cpu
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"variant": variant, "seconds": seconds, "cpu_seconds": cpu_seconds, "images": n,
            "images_per_second": n / seconds, "peak_rss_mib": peak_mib,
            "student_params": int(student.count_params())}


def main(argv):
    del argv
    if FLAGS.variant:
        print("RESULT " + json.dumps(run_variant(FLAGS.variant)))
        return
    runs = {v: [] for v in VARIANTS}
    for rep in range(FLAGS.repeats):
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, f"--variant={variant}",
                   f"--steps={FLAGS.steps}", f"--batch_size={FLAGS.batch_size}",
                   f"--jit_compile={FLAGS.jit_compile}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
            result = json.loads(line[len("RESULT "):])
            runs[variant].append(result)
            print(f"repeat {rep}: {variant:6s} {result['images_per_second']:.1f} img/s "
                  f"peak {result['peak_rss_mib']:.0f} MiB", flush=True)

    import numpy as np

    summary = {}
    for variant, results in runs.items():
        summary[variant] = {
            "images_per_second": float(np.median([r["images_per_second"] for r in results])),
            "seconds_per_step": float(np.median([r["seconds"] for r in results])) / FLAGS.steps,
            "cpu_seconds_per_step": float(np.median([r["cpu_seconds"] for r in results]))
            / FLAGS.steps,
            "peak_rss_mib": float(np.median([r["peak_rss_mib"] for r in results])),
            "runs": results,
        }
    floor_t = summary["floor"]["seconds_per_step"]
    keras_t = summary["keras"]["seconds_per_step"]
    names = {"tfkd": "(a) tfkd SoftTargets + Hint",
             "tfkd_unguarded": "(a0) (a) with check_numerics=False",
             "keras": "(b) keras.distillation Logits + Feature",
             "floor": "(c) floor: student step + teacher inference"}
    rows = []
    for variant in VARIANTS:
        s = summary[variant]
        rows.append([names[variant], f"{s['images_per_second']:.1f}",
                     f"{1000 * s['seconds_per_step']:.1f}",
                     f"{1000 * s['cpu_seconds_per_step']:.1f}",
                     f"{s['seconds_per_step'] / floor_t:.3f}",
                     f"{keras_t / s['seconds_per_step']:.2f}", f"{s['peak_rss_mib']:.0f}"])
    table = common.markdown_table(
        ["variant", "img/s", "ms/step", "CPU ms/step", "time vs floor", "speed-up vs (b)", "peak RSS MiB"],
        rows)
    goals = {
        "a_speedup_vs_b": keras_t / summary["tfkd"]["seconds_per_step"],
        "a_time_vs_floor": summary["tfkd"]["seconds_per_step"] / floor_t,
        "a_peak_vs_b_peak": summary["tfkd"]["peak_rss_mib"] / summary["keras"]["peak_rss_mib"],
        "a_cpu_speedup_vs_b": summary["keras"]["cpu_seconds_per_step"]
        / summary["tfkd"]["cpu_seconds_per_step"],
        "guard_cost_wall": summary["tfkd"]["seconds_per_step"]
        / summary["tfkd_unguarded"]["seconds_per_step"],
        "guard_cost_cpu": summary["tfkd"]["cpu_seconds_per_step"]
        / summary["tfkd_unguarded"]["cpu_seconds_per_step"],
    }
    payload = {"benchmark": "throughput", "machine": common.machine(),
               "config": {"batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
                          "repeats": FLAGS.repeats, "jit_compile": FLAGS.jit_compile},
               "summary": summary, "goals": goals}
    common.write_results("throughput", payload, table + "\n\n" + json.dumps(goals, indent=2))


if __name__ == "__main__":
    app.run(main)
