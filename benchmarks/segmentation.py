"""Segmentation KD benchmark on CamVid: what each dense knowledge term buys the same student.

    python -m benchmarks.segmentation                      # the committed CPU budget
    python -m benchmarks.segmentation --epochs=2 --teacher_epochs=2 --seeds=0 --train_size=64
    python -m benchmarks.segmentation --full               # a GPU budget (see FULL)

Rows (each seed: the same student initialisation, training images, order and epochs): the
student alone, then distilled with pixel-wise KD, channel-wise KD (CWD), pair-wise affinity
(SKD), cross-image relations (CIRKD) and the mix of `--mix`. With `--augment` (the default)
every row trains on the same pipeline of random flips and scale-crops (image and mask
together) and the teacher runs on each augmented view, so the student matches the teacher on
views it has never seen; `--noaugment` trains on the plain images with cached teacher
outputs (`tfkd.data.cache_teacher`, the teacher runs once per seed). The task loss on the
labels (void ignored) keeps weight 1 beside each term.
The score is the test mIoU (`tfkd.tflite.segmentation_scores`, i.e. `keras.metrics.MeanIoU`
with void ignored) of the float Keras student after its BatchNorm statistics are re-estimated.

The deployment part (`--deploy`, seed 0 of the mix row) runs quantization-aware distillation
from the distilled student, converts it to a fully int8 `.tflite` and reports its mIoU, the
parity with the QAT Keras model (pixel agreement, LSB), and LiteRT latency on 1 thread of
the int8 file, the float32 file of the same student and the float32 teacher.

The committed table (`benchmarks/results/segmentation.md`) is
`--epochs=25 --teacher_epochs=60 --teacher_arch=unet_mobile --teacher_width=2 --resume`.
Its CIRKD row has seed 0 only: relating every pixel of the U-Net teacher's 1/4-resolution
`head` (16 x 23 x 30 pixels a batch, a 11k x 11k relation matrix per side) costs 1,044 CPU s a
run against about 190 for the other terms, and the session's time ran out; `cirkd:pool=2`
cuts that by about 16x.

The teacher is trained once (`--teacher_epochs`, seed 1000) and saved in `--output_dir` as
`segmentation_teacher.keras`; `--teacher=path` reuses a saved one.
Writes `<output_dir>/segmentation.json` and `.md`.
"""
import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app
from absl import flags

from benchmarks import common

# Each row's knowledge specs (the ignore label is the data's, added below).
ROWS = {
    "student_alone": "",
    "pixel_kd": "pixel_kd:temperature=1",
    "cwd": "cwd:temperature=4,weight=3",
    "skd": "pairwise_kd:node_size=1,student_layer=head,teacher_layer=head",
    "cirkd": "cirkd:temperature=1,pool=1,student_layer=head,teacher_layer=head",
}
# The GPU budget of --full: all the data, longer runs, a wider teacher.
FULL = dict(epochs=100, teacher_epochs=150, teacher_width=3.0)

flags.DEFINE_string("data", str(common.SHARED / "data" / "camvid.npz"), "CamVid .npz.")
flags.DEFINE_string("teacher", "", "A trained teacher .keras (empty: train one and save it).")
flags.DEFINE_integer("train_size", 0, "First N training images (0: all 367).")
flags.DEFINE_integer("test_size", 0, "First N test images (0: all 233).")
flags.DEFINE_bool("full", False, "The GPU budget: " + str(FULL) + ".")
flags.DEFINE_integer("epochs", 30, "Epochs of every student row.")
flags.DEFINE_integer("teacher_epochs", 40, "Epochs of the teacher trained here.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_float("learning_rate", 5e-3, "Peak learning rate (Adam, cosine decay).")
flags.DEFINE_string("student", "lraspp_mobile", "Student of tfkd.students.")
flags.DEFINE_float("student_width", 0.5, "Width of the student.")
flags.DEFINE_string("teacher_arch", "lraspp_mobile", "Architecture of the teacher trained here.")
flags.DEFINE_float("teacher_width", 2.0, "Width of the teacher trained here.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_list("rows", list(ROWS) + ["mix"], "Rows to run: " + ", ".join(ROWS) + ", mix.")
flags.DEFINE_string("mix", "pixel_kd:temperature=1;cwd:temperature=4,weight=3",
                    "The mix row: knowledge specs separated by ';'.")
flags.DEFINE_bool("deploy", True, "QAT + int8 export + latency on seed 0 of the mix row.")
flags.DEFINE_integer("qat_epochs", 3, "Epochs of quantization-aware distillation (--deploy).")
flags.DEFINE_string("output_dir", str(common.RESULTS), "Results folder.")
flags.DEFINE_list("latency_widths", ["0.5", "1", "2"], "Student widths whose int8 and "
                  "float32 .tflite latencies are compared at the end (empty: none).")
flags.DEFINE_bool("augment", True, "Flips and scale-crops in every row, the teacher running on "
                  "each view (no augmentation: cached teacher outputs).")
flags.DEFINE_bool("resume", False, "Keep the runs (and the teacher) of an earlier invocation "
                                   "with the same budget in --output_dir; run the others.")
FLAGS = flags.FLAGS


def load(train_size, test_size):
    from tfkd import data

    splits = data.load_segmentation_npz(FLAGS.data).subset(train_size or None,
                                                           test_size or None)
    return splits


def specs(row):
    return ROWS[row] if row in ROWS else FLAGS.mix.replace(";", ",")


def knowledge(spec, ignore_label):
    import tfkd.knowledge as registry

    terms = registry.get_list(spec) if spec else []
    return [type(t).from_config({**t.get_config(), "ignore_label": ignore_label})
            if getattr(t, "ignore_label", "absent") is None else t for t in terms]


def optimizer(steps):
    import keras

    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
        FLAGS.learning_rate, max(1, steps)))


def task_loss(splits):
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                      ignore_class=splits.ignore_label)


def build(arch, width, splits, seed, momentum):
    import keras

    from tfkd import students

    keras.utils.set_random_seed(seed)
    return students.build(arch, splits.image_shape, splits.num_classes, width=width,
                          bn_momentum=momentum)


def score(model, splits):
    import tfkd.tflite as tfl

    x, y = splits.test
    out = model.predict(x.astype("float32"), batch_size=32, verbose=0)
    s = tfl.segmentation_scores(y, out, num_classes=splits.num_classes,
                                ignore_class=splits.ignore_label)
    return s["miou"], s["pixel_accuracy"]


def recompute(model, splits):
    from tfkd import batch_norm

    batch_norm.recompute_statistics(model, splits.train[0].astype("float32"), max_batches=32,
                                    batch_size=FLAGS.batch_size)


def steps(splits, epochs):
    return epochs * -(-len(splits.train[0]) // FLAGS.batch_size)


def teacher_model(splits):
    import keras

    from tfkd import batch_norm
    from tfkd import data

    if FLAGS.teacher:
        # How a teacher saved by this benchmark was trained is kept beside it.
        sidecar = pathlib.Path(FLAGS.teacher).with_suffix(".json")
        info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        return keras.models.load_model(FLAGS.teacher), {**info, "source": info.get(
            "source", FLAGS.teacher), "saved": FLAGS.teacher}
    n = steps(splits, FLAGS.teacher_epochs)
    teacher = build(FLAGS.teacher_arch, FLAGS.teacher_width, splits, 1000,
                    batch_norm.momentum_for_steps(n))
    teacher.compile(optimizer=optimizer(n), loss=task_loss(splits))
    x, y = splits.train
    ds = data.segmentation_dataset(x, y, FLAGS.batch_size, augment=True, shuffle=True, seed=1000,
                                   ignore_label=splits.ignore_label)
    cpu, wall = time.process_time(), time.perf_counter()
    teacher.fit(ds, epochs=FLAGS.teacher_epochs, verbose=0)
    info = {"source": f"trained here: {FLAGS.teacher_arch} x{FLAGS.teacher_width}, "
                      f"{FLAGS.teacher_epochs} epochs with flips and scale-crops",
            "train_wall_s": round(time.perf_counter() - wall, 1),
            "train_cpu_s": round(time.process_time() - cpu, 1)}
    recompute(teacher, splits)
    path = pathlib.Path(FLAGS.output_dir) / "segmentation_teacher.keras"
    tmp = path.with_name(path.stem + ".tmp.keras")
    teacher.save(tmp)
    os.replace(tmp, path)
    info["saved"] = str(path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return teacher, info


def run_row(row, seed, splits, teacher):
    """Trains one row for one seed; returns its scores and timings."""
    import tfkd
    from tfkd import batch_norm
    from tfkd import data

    n = steps(splits, FLAGS.epochs)
    student = build(FLAGS.student, FLAGS.student_width, splits, seed,
                    batch_norm.momentum_for_steps(n))
    x, y = splits.train
    cpu, wall = time.process_time(), time.perf_counter()
    distiller = None
    # With --augment every row trains on the same augmented pipeline (same seed: the same
    # flips and scale-crops), and the teacher runs on each augmented view ("consistent"
    # distillation); without, distillation reads cached teacher outputs.
    batches = data.segmentation_dataset(x, y, FLAGS.batch_size, shuffle=True, seed=seed,
                                        augment=True if FLAGS.augment else None,
                                        ignore_label=splits.ignore_label)
    if row == "student_alone":
        student.compile(optimizer=optimizer(n), loss=task_loss(splits))
        student.fit(batches, epochs=FLAGS.epochs, verbose=0)
    else:
        distiller = tfkd.Distiller(student, teacher,
                                   knowledge=knowledge(specs(row), splits.ignore_label))
        distiller.compile(optimizer=optimizer(n), loss=task_loss(splits))
        if not FLAGS.augment:
            batches = data.cache_teacher(distiller, x, y, batch_size=FLAGS.batch_size,
                                         seed=seed)
        distiller.fit(batches, epochs=FLAGS.epochs, verbose=0)
    result = {"train_wall_s": round(time.perf_counter() - wall, 1),
              "train_cpu_s": round(time.process_time() - cpu, 1)}
    recompute(student, splits)
    result["miou"], result["pixel_accuracy"] = score(student, splits)
    return result, distiller


def latency_ms(path):
    import tfkd.tflite as tfl

    return float(tfl.benchmark(str(path), num_threads=(1,), warmup=5, runs=30)
                 ["latency_ms"][1]["p50"])


def deploy(distiller, splits, teacher):
    """QAT from the distilled student, the int8 file, its mIoU, parity and latencies."""
    import tfkd.tflite as tfl

    x, y = splits.train
    x_test, y_test = splits.test
    float_miou, _ = score(distiller.student, splits)
    qat = distiller.quantization_aware(calibration_data=x[:128].astype("float32"))
    n = steps(splits, FLAGS.qat_epochs)
    qat.compile(optimizer=optimizer(n), loss=task_loss(splits))
    from tfkd import data

    qat.fit(data.segmentation_dataset(x, y, FLAGS.batch_size, shuffle=True, seed=1),
            epochs=FLAGS.qat_epochs, verbose=0)
    out = {"float_miou": float_miou}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        conv = tfl.convert(qat.student, str(tmp / "int8.tflite"), quantization="qat",
                           input_type="uint8", output_type="int8",
                           representative_data=x[:128].astype("float32"))
        tfl.convert(distiller.student, str(tmp / "float.tflite"), quantization="float32")
        tfl.convert(teacher, str(tmp / "teacher.tflite"), quantization="float32")
        result = tfl.evaluate(str(tmp / "int8.tflite"), (x_test, y_test),
                              metrics=("miou", "pixel_accuracy"),
                              ignore_class=splits.ignore_label,
                              num_classes=splits.num_classes)
        par = tfl.parity(qat.student, str(tmp / "int8.tflite"), x_test)
        edgetpu = tfl.check_edgetpu(str(tmp / "int8.tflite"))
        out.update(
            int8_miou=result["miou"], int8_pixel_accuracy=result["pixel_accuracy"],
            qat_keras_miou=score(qat.student, splits)[0],
            fully_int8=bool(conv.is_fully_int8), int8_kb=round(conv.size_bytes / 1024, 1),
            pixel_agreement=par["pixel_agreement"], mean_lsb=par["mean_lsb"],
            edgetpu_compatible=bool(edgetpu.compatible),
            edgetpu_mapped=f"{edgetpu.num_mapped}/{len(edgetpu.ops)}",
            int8_ms=latency_ms(tmp / "int8.tflite"), float_ms=latency_ms(tmp / "float.tflite"),
            teacher_ms=latency_ms(tmp / "teacher.tflite"))
    out["int8_speedup_vs_float"] = out["float_ms"] / out["int8_ms"]
    out["teacher_slowdown_vs_int8"] = out["teacher_ms"] / out["int8_ms"]
    return out


def mean_std(values):
    return float(np.mean(values)), float(np.std(values))


def latency_by_width(splits):
    """int8 vs float32 `.tflite` latency of the student architecture at each width of
    --latency_widths (untrained weights: latency does not depend on their values)."""
    import tfkd.tflite as tfl

    calibration = splits.train[0][:64].astype("float32")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in (float(w) for w in FLAGS.latency_widths):
            model = build(FLAGS.student, width, splits, 0, 0.99)
            paths = {k: pathlib.Path(tmp) / f"{k}_{width}.tflite" for k in ("float", "int8")}
            tfl.convert(model, str(paths["float"]), quantization="float32")
            tfl.convert(model, str(paths["int8"]), quantization="int8", input_type="uint8",
                        output_type="int8", representative_data=calibration)
            ms = {k: latency_ms(path) for k, path in paths.items()}
            out.append({"width": width, "params": model.count_params(),
                        "float_ms": ms["float"], "int8_ms": ms["int8"],
                        "int8_speedup_vs_float": ms["float"] / ms["int8"]})
            print("latency", out[-1], flush=True)
    return out


def table(payload):
    alone = payload["summary"].get("student_alone", {}).get("miou_mean")
    rows = []
    for row, s in payload["summary"].items():
        gain = "" if alone is None or row == "student_alone" else \
            f"{100 * (s['miou_mean'] - alone):+.2f}"
        rows.append([row, payload["specs"][row] or "-", len(s["seeds"]),
                     f"{100 * s['miou_mean']:.2f} ± {100 * s['miou_std']:.2f}", gain,
                     f"{100 * s['pixel_accuracy_mean']:.2f}", f"{s['train_cpu_s_mean']:.0f}"])
    text = common.markdown_table(
        ["row", "knowledge", "seeds", "test mIoU % (mean ± std)", "vs alone (points)",
         "pixel acc %", "train CPU s"], rows)
    t = payload["teacher"]
    text += (f"\n\nTeacher: {t['source']}, {t['params']} params, test mIoU "
             f"{100 * t['miou']:.2f}%. Student: {payload['student']}, {payload['student_params']}"
             f" params. Seeds {payload['seeds']}; {payload['budget']}.")
    d = payload.get("deploy")
    if d:
        text += "\n\n" + common.markdown_table(
            ["float mIoU %", "QAT Keras mIoU %", "int8 .tflite mIoU %", "pixel agreement",
             "mean LSB", "fully int8", "Edge TPU ops", "int8 ms", "float32 ms", "teacher ms",
             "int8 vs float32", "teacher vs int8"],
            [[f"{100 * d['float_miou']:.2f}", f"{100 * d['qat_keras_miou']:.2f}",
              f"{100 * d['int8_miou']:.2f}", f"{d['pixel_agreement']:.4f}",
              f"{d['mean_lsb']:.2f}", d["fully_int8"], d["edgetpu_mapped"],
              f"{d['int8_ms']:.2f}", f"{d['float_ms']:.2f}", f"{d['teacher_ms']:.2f}",
              f"{d['int8_speedup_vs_float']:.2f}x", f"{d['teacher_slowdown_vs_int8']:.2f}x"]])
        text += ("\n\nDeployment: seed 0 of the mix row, "
                 f"{payload['config']['qat_epochs']} QAT epochs; LiteRT on 1 thread, p50 of 30.")
    sweep = payload.get("latency_by_width")
    if sweep:
        text += "\n\n" + common.markdown_table(
            ["student width", "params", "float32 ms", "int8 ms", "int8 vs float32"],
            [[s["width"], s["params"], f"{s['float_ms']:.3f}", f"{s['int8_ms']:.3f}",
              f"{s['int8_speedup_vs_float']:.2f}x"] for s in sweep])
        text += ("\n\nLatency by width: the same architecture, post-training int8 (uint8 in), "
                 "LiteRT CPU (XNNPACK) on 1 thread, p50 of 30.")
    return text


CONFIG_KEYS = ("epochs", "teacher_epochs", "batch_size", "learning_rate", "augment", "student",
               "student_width", "teacher_arch", "teacher_width", "train_size", "test_size",
               "qat_epochs", "full")


def previous_runs(path, config):
    """Runs of an earlier invocation with the same budget (--resume), else {}."""
    if not FLAGS.resume or not path.is_file():
        return {}, None
    old = json.loads(path.read_text())
    if old.get("config") != config:
        raise app.UsageError(f"--resume: {path} was made with another budget "
                             f"({old.get('config')}); drop --resume or use another --output_dir.")
    return old.get("runs", {}), old.get("deploy")


def main(argv):
    del argv
    import keras

    if FLAGS.full:
        for k, v in FULL.items():
            setattr(FLAGS, k, v)
    unknown = [r for r in FLAGS.rows if r not in ROWS and r != "mix"]
    if unknown:
        raise app.UsageError(f"--rows: unknown {unknown}; use {list(ROWS) + ['mix']}.")
    out = pathlib.Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: FLAGS[k].value for k in CONFIG_KEYS}
    runs, deployed = previous_runs(out / "segmentation.json", config)
    splits = load(FLAGS.train_size, FLAGS.test_size)
    print(splits.describe())
    saved = out / "segmentation_teacher.keras"
    if FLAGS.resume and not FLAGS.teacher and saved.is_file():
        FLAGS.teacher = str(saved)  # the teacher of the runs being resumed
    teacher, teacher_info = teacher_model(splits)
    teacher_info["params"] = teacher.count_params()
    teacher_info["miou"] = score(teacher, splits)[0]
    print("teacher", teacher_info)
    seeds = [int(s) for s in FLAGS.seeds]
    probe = build(FLAGS.student, FLAGS.student_width, splits, 0, 0.99)
    payload = {
        "machine": common.machine(), "config": config,
        "budget": ("--full GPU budget" if FLAGS.full else
                   f"CPU budget: {len(splits.train[0])} train / {len(splits.test[0])} test "
                   f"images, {FLAGS.epochs} epochs, batch {FLAGS.batch_size}"),
        "data": splits.describe(), "seeds": seeds,
        "student": f"{FLAGS.student} x{FLAGS.student_width}",
        "student_params": probe.count_params(), "teacher": teacher_info,
    }
    for row in FLAGS.rows:
        for seed in seeds:
            done = [r for r in runs.get(row, []) if r["seed"] == seed and
                    r.get("knowledge") == specs(row)]
            if done and (row != "mix" or seed != seeds[0] or deployed or not FLAGS.deploy):
                continue
            result, distiller = run_row(row, seed, splits, teacher)
            result = {"seed": seed, "knowledge": specs(row), **result}
            runs[row] = [r for r in runs.get(row, []) if r["seed"] != seed] + [result]
            print(row, result, flush=True)
            if FLAGS.deploy and row == "mix" and seed == seeds[0]:
                deployed = deploy(distiller, splits, teacher)
                print("deploy", deployed, flush=True)
            keras.backend.clear_session()
            write(payload, runs, deployed)  # after every run: a stopped benchmark resumes
    if FLAGS.latency_widths:
        payload["latency_by_width"] = latency_by_width(splits)
        write(payload, runs, deployed)


def write(payload, runs, deployed):
    summary = {}
    for row, results in runs.items():
        summary[row] = {}
        for key in ("miou", "pixel_accuracy", "train_cpu_s", "train_wall_s"):
            summary[row][f"{key}_mean"], summary[row][f"{key}_std"] = mean_std(
                [r[key] for r in results])
        summary[row]["seeds"] = [r["seed"] for r in results]
    payload = {**payload, "specs": {row: specs(row) for row in runs}, "runs": runs,
               "summary": summary, "deploy": deployed}
    common.write_results("segmentation", payload, table(payload), FLAGS.output_dir)


if __name__ == "__main__":
    app.run(main)
