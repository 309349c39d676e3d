"""Super-resolution KD benchmark: what each SR knowledge term buys the same FSRCNN student.

    python -m benchmarks.super_resolution                  # the committed CPU budget
    python -m benchmarks.super_resolution --epochs=1 --teacher_epochs=1 --seeds=0 --scales=2
    python -m benchmarks.super_resolution --full           # a GPU budget (see FULL)

For each scale, an EDSR-style teacher (`tfkd.students.super_resolution.edsr`, seed 1000) is
trained once on T91; then, for each seed, the same `fsrcnn` student (same initial weights,
same stream of random T91 crops, flips and rotations from `tfkd.data.super_resolution.
sr_dataset`, same epochs) is trained alone (L1 on the HR patch) and distilled with each row's
terms (the L1 on the HR patch keeps weight 1 beside them). Rows: the student alone,
`reconstruction_kd` (L1 to the teacher's image), `fakd` and `hint` on the LR maps (`mapping`
of the student, `body` of the teacher), and the mix of `--mix`. Scores: PSNR / SSIM on the Y
channel of the full Set5 images, `scale` pixels shaved (`tfkd.tflite.sr_scores`), with the
bicubic and teacher rows as references. Every model's BatchNormalization statistics (the
upsampler's) are re-estimated on training batches before it is scored. The `data_free` row
(`tfkd.schemes.DataFreeSR`, [79] plus the teacher's BN statistics) trains the same student for
the same number of steps on generated LR patches only: it never sees a T91 image, and its BN
statistics are re-estimated on generated patches too. CPU seconds (`time.process_time`) per row are
reported beside wall seconds.

The deployment part (`--deploy`, seed 0 of the mix row at the first scale) converts the
distilled student post-training to int8 (calibrated on 200 LR patches) and, after
`--qat_epochs` of quantization-aware distillation, with QAT, and scores both `.tflite` files
on Set5 through LiteRT (`tfkd.tflite.evaluate(..., metrics=("psnr", "ssim"))`).

Writes `<output_dir>/super_resolution.json` and `.md`; the committed table is the default flags
(about 1,250 CPU seconds of training; 34 minutes of wall time here beside another benchmark).
"""
import functools
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app
from absl import flags

from benchmarks import common

ROWS = {
    "student_alone": "",
    "reconstruction_kd": "reconstruction_kd",
    "fakd": "fakd:student_layer=mapping,teacher_layer=body,weight=20",
    "hint": "hint:student_layer=mapping,teacher_layer=body,weight=20",
}
# The feature terms' weight 20 puts them near the pixel L1 (0-255 scale): on a T91 batch at
# initialisation the L1 to HR was 8.0, FAKD 0.16 and Hint 0.056 (x20: 3.3 and 1.1); untuned.
# The GPU budget of --full: more crops, longer runs, a wider teacher.
FULL = dict(epochs=100, teacher_epochs=200, teacher_width=1.0, patches_per_image=32)

flags.DEFINE_string("data", str(common.SHARED / "data" / "sr"), "Folder with T91/ and Set5/.")
flags.DEFINE_list("scales", ["2", "4"], "Scales.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_bool("full", False, "The GPU budget: " + str(FULL) + ".")
flags.DEFINE_integer("epochs", 10, "Epochs of every student row.")
flags.DEFINE_integer("teacher_epochs", 20, "Epochs of the teacher.")
flags.DEFINE_integer("patches_per_image", 8, "Random HR crops per T91 image and epoch.")
flags.DEFINE_integer("patch_size", 48, "HR crop side (a multiple of every scale).")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (Adam, cosine decay).")
flags.DEFINE_float("teacher_width", 0.5, "EDSR filters = 64 x this.")
flags.DEFINE_integer("teacher_blocks", 6, "EDSR residual blocks.")
flags.DEFINE_float("student_width", 1.0, "FSRCNN width.")
flags.DEFINE_list("rows", list(ROWS) + ["mix", "data_free"],
                  "Rows to run: " + ", ".join(ROWS) + ", mix, data_free.")
flags.DEFINE_float("generator_learning_rate", 1e-4, "Adam learning rate of DataFreeSR's generator.")
flags.DEFINE_string("mix", "reconstruction_kd;fakd:student_layer=mapping,teacher_layer=body,"
                    "weight=20",
                    "The mix row: knowledge specs separated by ';'.")
flags.DEFINE_bool("deploy", True, "PTQ vs QAT int8 files of the mix row (seed 0, first scale).")
flags.DEFINE_integer("qat_epochs", 2, "Epochs of quantization-aware distillation (--deploy).")
flags.DEFINE_string("output_dir", str(common.RESULTS), "Results folder.")
FLAGS = flags.FLAGS


def pipeline(hr_train, scale, seed):
    from tfkd.data import super_resolution as srd

    return srd.sr_dataset(hr_train, scale, patch_size=FLAGS.patch_size,
                          batch_size=FLAGS.batch_size, augment=True, shuffle=True, seed=seed,
                          patches_per_image=FLAGS.patches_per_image)


def steps_per_epoch(hr_train):
    return -(-len(hr_train) * FLAGS.patches_per_image // FLAGS.batch_size)


def score(model, pairs, scale):
    import tfkd.tflite as tfl

    out = [tfl.super_resolve(model, lr) for lr, _ in pairs]
    s = tfl.sr_scores([hr for _, hr in pairs], out, scale)
    return round(s["psnr"], 3), round(s["ssim"], 4)


def recompute_statistics(model, hr_train, scale):
    """The upsampler's BatchNormalization statistics re-estimated on 32 training batches with
    the weights fixed, as the recipe does: measured at x2, 10 epochs, seed 0, the moving
    averages gave 30.54 dB on Set5 and the re-estimated statistics 34.53."""
    from tfkd import batch_norm

    x = np.concatenate([a.numpy() for a, _ in pipeline(hr_train, scale, 5).take(32)])
    batch_norm.recompute_statistics(model, x, max_batches=32, batch_size=FLAGS.batch_size)


def train_teacher(hr_train, scale):
    import keras

    from tfkd.students import super_resolution as sr

    keras.utils.set_random_seed(1000)
    teacher = sr.edsr(scale=scale, filters=max(8, int(round(64 * FLAGS.teacher_width))),
                      blocks=FLAGS.teacher_blocks, name="teacher")
    teacher.compile(optimizer=common.cosine_adam(
                        steps_per_epoch(hr_train) * FLAGS.teacher_epochs, FLAGS.learning_rate),
                    loss=keras.losses.MeanAbsoluteError())
    wall, cpu = common.timed_fit(teacher, pipeline(hr_train, scale, 1000), FLAGS.teacher_epochs)
    recompute_statistics(teacher, hr_train, scale)
    return teacher, wall, cpu


def train_student(row, teacher, hr_train, scale, seed):
    import keras

    import tfkd
    from tfkd.students import super_resolution as sr

    spec = ROWS[row] if row in ROWS else FLAGS.mix.replace(";", ",")
    keras.utils.set_random_seed(seed)
    student = sr.fsrcnn(scale=scale, width=FLAGS.student_width)
    steps = steps_per_epoch(hr_train) * FLAGS.epochs
    model = student
    if spec:
        model = tfkd.Distiller(student, teacher, knowledge=tfkd.knowledge.get_list(spec))
    model.compile(optimizer=common.cosine_adam(steps, FLAGS.learning_rate),
                  loss=keras.losses.MeanAbsoluteError())
    wall, cpu = common.timed_fit(model, pipeline(hr_train, scale, seed), FLAGS.epochs)
    recompute_statistics(student, hr_train, scale)
    return student, model, wall, cpu


def train_data_free(teacher, hr_train, scale, seed):
    """The student distilled by DataFreeSR on generated patches, as many steps as a row."""
    import keras

    import tfkd
    from tfkd import batch_norm
    from tfkd.students import super_resolution as sr

    keras.utils.set_random_seed(seed)
    student = sr.fsrcnn(scale=scale, width=FLAGS.student_width)
    steps = steps_per_epoch(hr_train) * FLAGS.epochs
    model = tfkd.schemes.DataFreeSR(teacher, student, patch_size=FLAGS.patch_size // scale,
                                    batch_size=FLAGS.batch_size)
    model.compile(optimizer=common.cosine_adam(steps, FLAGS.learning_rate),
                  generator_optimizer=keras.optimizers.Adam(FLAGS.generator_learning_rate),
                  loss=keras.losses.MeanAbsoluteError())
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(epochs=FLAGS.epochs, steps_per_epoch=steps_per_epoch(hr_train), verbose=0)
    wall, cpu = round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)
    x = np.concatenate([np.asarray(model.generate(FLAGS.batch_size)) for _ in range(32)])
    batch_norm.recompute_statistics(student, x, max_batches=32, batch_size=FLAGS.batch_size)
    return student, model, wall, cpu


def deploy(distiller, hr_train, pairs, scale, out_dir):
    """PSNR / SSIM of the PTQ and the QAT int8 files of one distilled student."""
    import keras

    import tfkd.tflite as tfl

    batches = [x.numpy() for x, _ in pipeline(hr_train, scale, 7).take(13)]
    calib = np.concatenate(batches)[:200]
    result = {}
    ptq = out_dir / f"sr_x{scale}_ptq_int8.tflite"
    tfl.convert(distiller.student, ptq, quantization="int8", representative_data=calib,
                num_calibration_steps=200, target="litert", output_meaning="image")
    qat = distiller.quantization_aware(calibration_data=calib)
    qat.compile(optimizer=common.cosine_adam(steps_per_epoch(hr_train) * FLAGS.qat_epochs,
                                             FLAGS.learning_rate / 10),
                loss=keras.losses.MeanAbsoluteError())
    wall, cpu = common.timed_fit(qat, pipeline(hr_train, scale, 11), FLAGS.qat_epochs)
    # (The QAT student folded BN into its convs from the re-estimated statistics.)
    qat_path = out_dir / f"sr_x{scale}_qat_int8.tflite"
    tfl.convert(qat.student, qat_path, quantization="qat", target="litert",
                output_meaning="image")
    for name, path in (("ptq", ptq), ("qat", qat_path)):
        r = tfl.evaluate(str(path), pairs, metrics=("psnr", "ssim"))
        result[name] = {"psnr": round(r["psnr"], 3), "ssim": round(r["ssim"], 4)}
        for leftover in (path, path.with_suffix(".json")):  # the file and its sidecar
            leftover.unlink(missing_ok=True)
    result["qat_keras"] = dict(zip(("psnr", "ssim"), score(qat.student, pairs, scale)))
    result["qat_seconds"], result["qat_cpu_seconds"] = wall, cpu
    return result


def main(argv):
    del argv
    import pathlib

    import tfkd.tflite as tfl
    from tfkd.data import super_resolution as srd

    out_dir = common.prepare_run(FLAGS, FULL)
    root = pathlib.Path(FLAGS.data)
    runs, deployment = [], None
    for scale in (int(s) for s in FLAGS.scales):
        hr_train = srd.load_sr_folder(root / "T91", scale=scale)
        pairs = srd.sr_pairs(srd.load_sr_folder(root / "Set5", scale=scale), scale)
        bicubic = tfl.sr_scores([h for _, h in pairs],
                                [tfl.bicubic_upscale(lr, scale) for lr, _ in pairs], scale)
        runs.append({"scale": scale, "row": "bicubic", "seed": None,
                     "psnr": round(bicubic["psnr"], 3), "ssim": round(bicubic["ssim"], 4)})
        teacher, wall, cpu = train_teacher(hr_train, scale)
        psnr, ssim = score(teacher, pairs, scale)
        runs.append({"scale": scale, "row": "teacher", "seed": 1000, "psnr": psnr,
                     "ssim": ssim, "params": teacher.count_params(), "seconds": wall,
                     "cpu_seconds": cpu})
        print(json.dumps(runs[-1]), flush=True)
        for seed in (int(s) for s in FLAGS.seeds):
            for row in FLAGS.rows:
                train = train_data_free if row == "data_free" else functools.partial(
                    train_student, row)
                student, model, wall, cpu = train(teacher, hr_train, scale, seed)
                psnr, ssim = score(student, pairs, scale)
                runs.append({"scale": scale, "row": row, "seed": seed, "psnr": psnr,
                             "ssim": ssim, "params": student.count_params(), "seconds": wall,
                             "cpu_seconds": cpu})
                print(json.dumps(runs[-1]), flush=True)
                if FLAGS.deploy and deployment is None and row == "mix" and seed == 0:
                    deployment = {"scale": scale, "float": {"psnr": psnr, "ssim": ssim},
                                  **deploy(model, hr_train, pairs, scale, out_dir)}
                    print(json.dumps(deployment), flush=True)
    write(runs, deployment)


def summary(runs):
    """[(scale, row, n, mean psnr, std psnr, mean ssim, mean cpu s)] in run order."""
    out = {}
    for r in runs:
        out.setdefault((r["scale"], r["row"]), []).append(r)
    rows = []
    for (scale, row), rs in out.items():
        p = np.array([r["psnr"] for r in rs])
        cpu = [r["cpu_seconds"] for r in rs if r.get("cpu_seconds") is not None]
        rows.append((scale, row, len(rs), float(p.mean()), float(p.std()),
                     float(np.mean([r["ssim"] for r in rs])),
                     float(np.mean(cpu)) if cpu else None))
    return rows


def data_free_line(rows):
    """The data-free student's PSNR gain over bicubic as a share of the data-trained ones'."""
    psnr = {(scale, row): p for scale, row, _, p, _, _, _ in rows}
    parts = []
    for scale in sorted({scale for scale, _ in psnr}):
        got = [psnr.get((scale, r)) for r in ("bicubic", "data_free", "student_alone", "mix")]
        if None in got:
            continue
        bicubic, free, alone, mix = got
        parts.append(f"x{scale}: {free - bicubic:+.2f} dB over bicubic, "
                     f"{(free - bicubic) / (alone - bicubic):.0%} of the student alone's gain "
                     f"({alone - bicubic:+.2f}), {(free - bicubic) / (mix - bicubic):.0%} of "
                     f"the mix's ({mix - bicubic:+.2f})")
    return ("\n\nData-free (no training image): " + "; ".join(parts) + ".") if parts else ""


def write(runs, deployment):
    budget = {k: FLAGS[k].value for k in ("epochs", "teacher_epochs", "patches_per_image",
                                           "patch_size", "batch_size", "learning_rate",
                                           "generator_learning_rate",
                                           "teacher_width", "teacher_blocks", "student_width",
                                           "mix", "seeds", "scales")}
    table_rows = []
    for scale, row, n, p, sd, s, cpu in summary(runs):
        alone = [x for x in summary(runs) if x[0] == scale and x[1] == "student_alone"]
        delta = f"{p - alone[0][3]:+.2f}" if alone and row not in ("bicubic", "teacher") else "-"
        table_rows.append((f"x{scale}", row, n, f"{p:.2f} ± {sd:.2f}", f"{s:.4f}", delta,
                           "-" if cpu is None else f"{cpu:.0f}"))
    table = common.markdown_table(
        ["scale", "row", "runs", "Set5 PSNR (dB, mean ± std)", "SSIM", "vs alone",
         "CPU s"], table_rows)
    if deployment:
        d = deployment
        table += (f"\n\nInt8 (seed 0, mix, x{d['scale']}): float {d['float']['psnr']:.2f} dB, "
                  f"PTQ .tflite {d['ptq']['psnr']:.2f}, QAT .tflite {d['qat']['psnr']:.2f} "
                  f"(QAT Keras {d['qat_keras']['psnr']:.2f}).")
    table += data_free_line(summary(runs))
    table += "\n\nBudget: " + json.dumps(budget)
    common.write_results("super_resolution", {"machine": common.machine(), "budget": budget,
                                              "runs": runs, "deployment": deployment},
                         table, FLAGS.output_dir)


if __name__ == "__main__":
    app.run(main)
