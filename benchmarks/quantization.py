"""Quantization benchmark: float vs PTQ int8 vs QAT int8 vs QAT+KD int8 vs tfmot's QAT, CIFAR-10.

    python benchmarks/quantization.py                      # default CPU budget (~20-25 min, 2 cores)
    python benchmarks/quantization.py --train_size=512 --test_size=256 --epochs=1 \
        --qat_epochs=1 --parity_samples=128 --latency_runs=20   # smoke run (~3 min)
    python benchmarks/quantization.py --full                # all 50k images, GPU budget

Student: `tfkd.students.mobile_cnn` (71k parameters: Conv/BN/ReLU, GAP, Dense; Edge TPU-
mappable). Teacher: the reference ResNet-20 (`../shared/models/cifar10_resnet20_teacher.keras`).
Per seed, on the same training subset, pipeline (flips + 4-pixel crops) and initialisation:

  float           student trained alone with labels (`--epochs`, Adam, cosine decay)
  PTQ int8        `tfkd.tflite.convert(float, quantization="int8", representative_data=train)`
  QAT int8        `quantize_model(float)` + `--qat_epochs` of label fine-tuning
  float KD        the same student trained from the same init by `tfkd.Distiller`
                  (SoftTargets(T) + Hint("stage3", "stage3"), student_loss_weight 0.5)
  QAT+KD int8     `distiller.quantization_aware(...)` + `--qat_epochs` of KD fine-tuning
  tfmot QAT int8  `benchmarks/tfmot_reference.py` in a subprocess (TF_USE_LEGACY_KERAS=1):
                  tf_keras copy of the float student, same weights, same fine-tune budget

Every int8 file has int8 input and output. Accuracy of .tflite files comes from
`tfkd.tflite.evaluate` on `--test_size` test images; parity (`tfkd.tflite.parity`) compares each
QAT .tflite with its own Keras model on `--parity_samples` test images; latency is
`tfkd.tflite.benchmark` p50 (1 and 2 threads, XNNPACK), median over interleaved repeats.
Writes `benchmarks/results/quantization.json` and `.md` through `common.write_results`.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_size", 10000, "First N training images (the file is shuffled).")
flags.DEFINE_integer("test_size", 10000, "First N test images (10000 = the full test set).")
flags.DEFINE_bool("full", False, "GPU budget: all 50k training images, 40 epochs, 5 QAT epochs "
                  "(overrides --train_size, --epochs, --qat_epochs).")
flags.DEFINE_integer("epochs", 30, "Float training epochs (student alone and KD).")
flags.DEFINE_integer("qat_epochs", 3, "Quantization-aware fine-tuning epochs (every QAT row, "
                     "tfmot's included).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate of float training (Adam, cosine).")
flags.DEFINE_float("qat_learning_rate", 3e-4, "Peak learning rate of QAT fine-tuning.")
flags.DEFINE_list("seeds", ["0"], "Seeds (each runs every row).")
flags.DEFINE_string("student", "mobile_cnn", "tfkd.students name (tfmot's copy: mobile_cnn).")
flags.DEFINE_float("temperature", 4.0, "SoftTargets temperature.")
flags.DEFINE_bool("hint", True, "Add Hint('stage3', 'stage3') to SoftTargets in the KD rows.")
flags.DEFINE_float("student_loss_weight", 0.5, "Label-loss weight in the KD rows.")
flags.DEFINE_bool("augment", True, "Random flips and 4-pixel crops.")
flags.DEFINE_integer("calibration_samples", 512, "Training images for QAT range calibration "
                     "and PTQ representative data.")
flags.DEFINE_integer("parity_samples", 2000, "Test images for parity.")
flags.DEFINE_integer("latency_runs", 200, "Timed invocations per latency measurement.")
flags.DEFINE_integer("latency_repeats", 3, "Interleaved latency repeats (median reported).")
flags.DEFINE_bool("tfmot", True, "Run the tfmot reference row.")
flags.DEFINE_string("workdir", None, "Where .tflite files go (default: a temp folder).")
flags.DEFINE_string("name", "quantization", "Results name (benchmarks/results/<name>.json).")

GOALS = {
    "accuracy_vs_float": "QAT+KD int8 accuracy >= float student - 0.3 pt",
    "accuracy_vs_ptq": "QAT+KD int8 accuracy >= PTQ int8",
    "parity_mean": "QAT+KD int8 parity mean <= 0.25 LSB",
    "parity_agreement": "QAT+KD int8 top-1 agreement >= 99%",
    "parity_vs_tfmot": "QAT parity mean better than tfmot's",
    "speed": "int8 >= 2x faster than float32 (p50, 1 and 2 threads)",
    "size": "int8 >= 3.5x smaller than float32",
}


def _optimizer(lr, epochs, n):
    import keras

    steps = max(1, epochs * -(-n // FLAGS.batch_size))
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps))


def save_weights(model, path, check_x):
    """Float weights as `<layer>:<i>` arrays (+ the input scale and reference logits)."""
    import numpy as np

    arrays = {}
    for layer in model.layers:
        for i, w in enumerate(layer.get_weights()):
            arrays[f"{layer.name}:{i}"] = w
    rescale = [l for l in model.layers if type(l).__name__ == "Rescaling"]
    arrays["input_scale"] = np.float32(rescale[0].scale if rescale else 1.0)
    arrays["check_x"] = check_x
    arrays["check_logits"] = model.predict(check_x, verbose=0)
    np.savez(path, **arrays)


def run_tfmot(weights, path, seed):
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "tfmot_reference.py"),
           f"--weights={weights}", f"--tflite={path}", f"--train_size={FLAGS.train_size}",
           f"--test_size={FLAGS.test_size}", f"--qat_epochs={FLAGS.qat_epochs}",
           f"--batch_size={FLAGS.batch_size}", f"--learning_rate={FLAGS.qat_learning_rate}",
           f"--seed={seed}", f"--augment={FLAGS.augment}",
           f"--parity_samples={FLAGS.parity_samples}"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"tfmot_reference.py failed ({out.returncode}):\n"
                           f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def keras_accuracy(model, x, y):
    import numpy as np

    return float(np.mean(np.argmax(model.predict(x, batch_size=500, verbose=0), -1) == y))


def run_seed(seed, teacher, train, test, workdir):
    import keras
    import numpy as np

    import tfkd
    import tfkd.students
    import tfkd.tflite as tfl
    from tfkd.quantization import FreezeQuantizationRanges, quantize_model

    x_train, y_train = train
    x_test, y_test = test
    n = len(x_train)
    calib = x_train[:FLAGS.calibration_samples]
    calib_steps = max(1, FLAGS.calibration_samples // 32)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ds = common.train_dataset(x_train, y_train, FLAGS.batch_size, seed, FLAGS.augment)
    qat_callbacks = ([FreezeQuantizationRanges(epoch=FLAGS.qat_epochs - 1)]
                     if FLAGS.qat_epochs > 1 else [])
    files = {k: os.path.join(workdir, f"{k}_seed{seed}.tflite")
             for k in ("float32", "ptq_int8", "qat_int8", "qatkd_int8", "tfmot_int8")}
    r, seconds = {"seed": seed}, {}

    # Float student, trained alone.
    keras.utils.set_random_seed(seed)
    student = tfkd.students.build(FLAGS.student, (32, 32, 3), 10)
    init_weights = student.get_weights()
    r["student_params"] = int(student.count_params())
    student.compile(_optimizer(FLAGS.learning_rate, FLAGS.epochs, n), ce)
    t = time.perf_counter()
    student.fit(ds, epochs=FLAGS.epochs, verbose=0)
    seconds["float"] = time.perf_counter() - t
    r["float_keras_accuracy"] = keras_accuracy(student, x_test, y_test)
    tfl.convert(student, files["float32"], quantization="float32")
    r["float_tflite_accuracy"] = tfl.evaluate(files["float32"], (x_test, y_test))["accuracy"]
    print(f"[seed {seed}] float: {r['float_keras_accuracy']:.4f} ({seconds['float']:.0f} s)",
          flush=True)

    # PTQ int8 of it.
    tfl.convert(student, files["ptq_int8"], quantization="int8", representative_data=calib,
                input_type="int8", output_type="int8")
    r["ptq_tflite_accuracy"] = tfl.evaluate(files["ptq_int8"], (x_test, y_test))["accuracy"]
    r["ptq_parity_vs_float"] = tfl.parity(student, files["ptq_int8"], x_test,
                                          max_samples=FLAGS.parity_samples)
    print(f"[seed {seed}] PTQ int8: {r['ptq_tflite_accuracy']:.4f}", flush=True)

    # tfmot's reference starts from the same float weights (saved before QAT touches anything).
    weights_path = os.path.join(workdir, f"float_seed{seed}.npz")
    save_weights(student, weights_path, x_test[:64])

    # QAT int8, labels only.
    qat = quantize_model(student, calibration_data=calib, calibration_steps=calib_steps)
    qat.compile(_optimizer(FLAGS.qat_learning_rate, FLAGS.qat_epochs, n), ce)
    t = time.perf_counter()
    qat.fit(ds, epochs=FLAGS.qat_epochs, verbose=0, callbacks=qat_callbacks)
    seconds["qat"] = time.perf_counter() - t
    r["qat_keras_accuracy"] = keras_accuracy(qat, x_test, y_test)
    tfl.convert(qat, files["qat_int8"], quantization="qat", input_type="int8",
                output_type="int8")
    r["qat_tflite_accuracy"] = tfl.evaluate(files["qat_int8"], (x_test, y_test))["accuracy"]
    r["qat_parity"] = tfl.parity(qat, files["qat_int8"], x_test,
                                 max_samples=FLAGS.parity_samples)
    print(f"[seed {seed}] QAT int8: {r['qat_tflite_accuracy']:.4f} parity "
          f"{r['qat_parity']['mean_lsb']:.3f} LSB ({seconds['qat']:.0f} s)", flush=True)

    # Float KD from the same initialisation, then QAT with KD.
    keras.utils.set_random_seed(seed)
    kd_student = tfkd.students.build(FLAGS.student, (32, 32, 3), 10)
    kd_student.set_weights(init_weights)
    terms = [tfkd.knowledge.SoftTargets(FLAGS.temperature)]
    if FLAGS.hint:
        terms.append(tfkd.knowledge.Hint("stage3", "stage3"))
    distiller = tfkd.Distiller(kd_student, teacher, knowledge=terms,
                               student_loss_weight=FLAGS.student_loss_weight)
    distiller.compile(_optimizer(FLAGS.learning_rate, FLAGS.epochs, n), ce)
    t = time.perf_counter()
    distiller.fit(ds, epochs=FLAGS.epochs, verbose=0)
    seconds["float_kd"] = time.perf_counter() - t
    r["float_kd_keras_accuracy"] = keras_accuracy(kd_student, x_test, y_test)
    print(f"[seed {seed}] float KD: {r['float_kd_keras_accuracy']:.4f} "
          f"({seconds['float_kd']:.0f} s)", flush=True)
    qat_kd = distiller.quantization_aware(
        calibration_data=calib, calibration_steps=calib_steps,
        optimizer=_optimizer(FLAGS.qat_learning_rate, FLAGS.qat_epochs, n))
    t = time.perf_counter()
    history = qat_kd.fit(ds, epochs=FLAGS.qat_epochs, verbose=0, callbacks=qat_callbacks)
    seconds["qat_kd"] = time.perf_counter() - t
    r["qat_kd_history"] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    r["qatkd_keras_accuracy"] = keras_accuracy(qat_kd.student, x_test, y_test)
    report = tfl.convert(qat_kd.student, files["qatkd_int8"], quantization="qat",
                         input_type="int8", output_type="int8")
    r["qatkd_is_fully_int8"] = bool(report.is_fully_int8)
    r["qatkd_tflite_accuracy"] = tfl.evaluate(files["qatkd_int8"], (x_test, y_test))["accuracy"]
    r["qatkd_parity"] = tfl.parity(qat_kd.student, files["qatkd_int8"], x_test,
                                   max_samples=FLAGS.parity_samples)
    edgetpu = tfl.check_edgetpu(files["qatkd_int8"])
    r["edgetpu"] = {"compatible": bool(edgetpu.compatible), "mapped": int(edgetpu.num_mapped),
                    "ops": len(edgetpu.ops),
                    "op_names": sorted({op.op for op in edgetpu.ops}),
                    "first_unmapped": (None if edgetpu.first_unmapped is None else
                                       f"{edgetpu.first_unmapped.op}: "
                                       f"{edgetpu.first_unmapped.reason}")}
    print(f"[seed {seed}] QAT+KD int8: {r['qatkd_tflite_accuracy']:.4f} parity "
          f"{r['qatkd_parity']['mean_lsb']:.3f} LSB; Edge TPU {edgetpu.num_mapped}/"
          f"{len(edgetpu.ops)} ops mapped ({seconds['qat_kd']:.0f} s)", flush=True)

    if FLAGS.tfmot:
        t = time.perf_counter()
        r["tfmot"] = run_tfmot(weights_path, files["tfmot_int8"], seed)
        seconds["tfmot"] = time.perf_counter() - t
        print(f"[seed {seed}] tfmot QAT int8: {r['tfmot']['tflite_accuracy']:.4f} parity "
              f"{r['tfmot']['parity']['mean_lsb']:.3f} LSB ({seconds['tfmot']:.0f} s)",
              flush=True)

    # Size and latency, interleaved repeats so background load hits every file alike.
    present = {k: p for k, p in files.items() if os.path.exists(p)}
    lat = {k: {1: [], 2: []} for k in present}
    for _ in range(FLAGS.latency_repeats):
        for k, p in present.items():
            b = tfl.benchmark(p, num_threads=(1, 2), runs=FLAGS.latency_runs)
            for threads in (1, 2):
                lat[k][threads].append(b["latency_ms"][threads]["p50"])
    r["size_bytes"] = {k: os.path.getsize(p) for k, p in present.items()}
    r["latency_p50_ms"] = {k: {th: float(np.median(v)) for th, v in d.items()}
                           for k, d in lat.items()}
    r["latency_p50_ms_runs"] = lat
    r["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return r


def _mean_std(values):
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def _fmt(values, scale=1.0, digits=2):
    m, s = _mean_std(values)
    if m is None:
        return "-"
    if len(values) > 1:
        return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"
    return f"{m * scale:.{digits}f}"


def summarise(runs):
    """Table rows, goal verdicts (on the means over seeds) and the markdown."""

    get = lambda f: [f(r) for r in runs]
    mean = lambda f: _mean_std(get(f))[0]
    has_tfmot = all("tfmot" in r for r in runs)

    def par(key, field):
        return (lambda r: r[key][field]) if key != "tfmot" else (lambda r: r["tfmot"]["parity"][field])

    def lat(k, th):
        return lambda r: r["latency_p50_ms"][k][th]

    rows_spec = [
        ("float student (labels)", "float32", lambda r: r["float_keras_accuracy"],
         lambda r: r["float_tflite_accuracy"], None),
        ("PTQ int8 of it", "ptq_int8", None, lambda r: r["ptq_tflite_accuracy"],
         "ptq_parity_vs_float"),
        ("QAT int8 (labels)", "qat_int8", lambda r: r["qat_keras_accuracy"],
         lambda r: r["qat_tflite_accuracy"], "qat_parity"),
        ("float student (KD)", None, lambda r: r["float_kd_keras_accuracy"], None, None),
        ("QAT+KD int8", "qatkd_int8", lambda r: r["qatkd_keras_accuracy"],
         lambda r: r["qatkd_tflite_accuracy"], "qatkd_parity"),
    ]
    if has_tfmot:
        rows_spec.append(("tfmot QAT int8 (labels, tf_keras copy)", "tfmot_int8",
                          lambda r: r["tfmot"]["keras_accuracy"],
                          lambda r: r["tfmot"]["tflite_accuracy"], "tfmot"))
    headers = ["row", "Keras acc %", ".tflite acc %", "parity mean LSB", "max LSB",
               "top-1 agree %", "size KiB", "p50 ms 1 thr", "p50 ms 2 thr"]
    rows = []
    for label, file_key, k_acc, t_acc, par_key in rows_spec:
        row = [label, _fmt(get(k_acc), 100) if k_acc else "-",
               _fmt(get(t_acc), 100) if t_acc else "-"]
        if par_key:
            row += [_fmt(get(par(par_key, "mean_lsb")), 1, 3),
                    _fmt(get(par(par_key, "max_lsb")), 1, 0),
                    _fmt(get(par(par_key, "top1_agreement")), 100, 2)]
        else:
            row += ["-", "-", "-"]
        if file_key:
            row += [_fmt(get(lambda r: r["size_bytes"][file_key]), 1 / 1024, 1),
                    _fmt(get(lat(file_key, 1)), 1, 3), _fmt(get(lat(file_key, 2)), 1, 3)]
        else:
            row += ["-", "-", "-"]
        rows.append(row)

    acc_float = mean(lambda r: r["float_keras_accuracy"])
    acc_ptq = mean(lambda r: r["ptq_tflite_accuracy"])
    acc_qatkd = mean(lambda r: r["qatkd_tflite_accuracy"])
    p_mean = mean(lambda r: r["qatkd_parity"]["mean_lsb"])
    p_agree = mean(lambda r: r["qatkd_parity"]["top1_agreement"])
    q_mean = mean(lambda r: r["qat_parity"]["mean_lsb"])
    speed = {th: mean(lat("float32", th)) / mean(lat("qatkd_int8", th)) for th in (1, 2)}
    size_ratio = mean(lambda r: r["size_bytes"]["float32"] / r["size_bytes"]["qatkd_int8"])
    goals = {
        "accuracy_vs_float": (acc_qatkd >= acc_float - 0.003,
                              f"{100 * acc_qatkd:.2f} vs {100 * acc_float:.2f} - 0.3"),
        "accuracy_vs_ptq": (acc_qatkd >= acc_ptq,
                            f"{100 * acc_qatkd:.2f} vs {100 * acc_ptq:.2f}"),
        "parity_mean": (p_mean <= 0.25, f"{p_mean:.3f} LSB (QAT labels-only: {q_mean:.3f})"),
        "parity_agreement": (p_agree >= 0.99, f"{100 * p_agree:.2f} %"),
        "speed": (min(speed.values()) >= 2.0,
                  f"{speed[1]:.2f}x (1 thread), {speed[2]:.2f}x (2 threads)"),
        "size": (size_ratio >= 3.5, f"{size_ratio:.2f}x"),
    }
    if has_tfmot:
        t_mean = mean(lambda r: r["tfmot"]["parity"]["mean_lsb"])
        goals["parity_vs_tfmot"] = (max(p_mean, q_mean) < t_mean,
                                    f"tfkd {q_mean:.3f} (QAT) / {p_mean:.3f} (QAT+KD) vs tfmot "
                                    f"{t_mean:.3f} LSB")
    goals = {k: {"goal": GOALS[k], "met": bool(v[0]), "measured": v[1]} for k, v in goals.items()}
    goal_rows = [[g["goal"], "met" if g["met"] else "NOT met", g["measured"]]
                 for g in goals.values()]
    return headers, rows, goals, goal_rows


def main(argv):
    del argv
    import keras

    if FLAGS.full:
        FLAGS.train_size, FLAGS.epochs, FLAGS.qat_epochs = 50000, 40, 5
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="tfkd_quant_bench_")
    os.makedirs(workdir, exist_ok=True)
    train = common.load_cifar10("train", FLAGS.train_size)
    test = common.load_cifar10("test", FLAGS.test_size)
    teacher = keras.models.load_model(common.TEACHER_PATH)
    teacher_acc = keras_accuracy(teacher, *test)
    budget = {k: getattr(FLAGS, k) for k in (
        "train_size", "test_size", "epochs", "qat_epochs", "batch_size", "learning_rate",
        "qat_learning_rate", "student", "temperature", "hint", "student_loss_weight", "augment",
        "calibration_samples", "parity_samples", "latency_runs", "latency_repeats")}
    budget["seeds"] = [int(s) for s in FLAGS.seeds]
    budget["train_size"] = len(train[0])
    budget["test_size"] = len(test[0])
    print(f"budget: {json.dumps(budget)}; teacher accuracy {teacher_acc:.4f}", flush=True)
    runs = []
    start = time.perf_counter()
    for seed in budget["seeds"]:
        runs.append(run_seed(seed, teacher, train, test, workdir))
    headers, rows, goals, goal_rows = summarise(runs)
    r0 = runs[0]
    et = r0["edgetpu"]
    caption = (
        f"CIFAR-10, student `{FLAGS.student}` ({r0['student_params']} params), teacher ResNet-20 "
        f"({100 * teacher_acc:.2f} % on the same test images). Budget: {budget['train_size']} "
        f"train images, {FLAGS.epochs} float epochs, {FLAGS.qat_epochs} QAT epochs (every QAT "
        f"row, tfmot's included), batch {FLAGS.batch_size}, augment={FLAGS.augment}, "
        f"seeds {budget['seeds']}; accuracy on {budget['test_size']} test images, parity on "
        f"{min(FLAGS.parity_samples, budget['test_size'])} (each int8 file vs its own Keras "
        f"model; PTQ vs the float model). KD: SoftTargets(T={FLAGS.temperature})"
        f"{' + Hint(stage3, stage3)' if FLAGS.hint else ''}, student_loss_weight "
        f"{FLAGS.student_loss_weight}. Latency: tfkd.tflite.benchmark p50 (XNNPACK), median of "
        f"{FLAGS.latency_repeats} interleaved repeats, on a shared {os.cpu_count()}-core host. "
        f"Edge TPU (check_edgetpu, QAT+KD int8): {et['mapped']}/{et['ops']} ops mapped, "
        f"compatible={et['compatible']} ({', '.join(et['op_names'])}).")
    table = "\n\n".join([caption, common.markdown_table(headers, rows),
                         common.markdown_table(["goal", "verdict", "measured"], goal_rows)])
    payload = {"budget": budget, "teacher_accuracy": teacher_acc, "machine": common.machine(),
               "runs": runs, "goals": goals, "table": {"headers": headers, "rows": rows},
               "wall_seconds": round(time.perf_counter() - start, 1),
               "command": " ".join(["python"] + sys.argv)}
    common.write_results(FLAGS.name, json.loads(json.dumps(payload, default=_jsonable)), table)


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    return str(o)


if __name__ == "__main__":
    app.run(main)
