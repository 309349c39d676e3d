"""Each knowledge term's scale on a fresh student: its loss and the norm of its gradient on
the student's weights at the first step, beside the cross-entropy's.

    python -m benchmarks.term_scale                                   # every kd_cifar10 row
    python -m benchmarks.term_scale --rows=mlkd,mlkd_reference --batch_sizes=64,128

Why: a term whose gradient is tens of times the cross-entropy's on a fresh student drowns the
labels before the student has features to match (DIST at tau 4 and MLKD with the authors'
sums score far below the student alone in `kd_cifar10.md`). This says so in seconds, for
one batch, where the accuracy table needs an hour; it is what a warm-up or a smaller weight
should be judged by.

Setup: the first `--batch_sizes` images of the CIFAR-10 training split (no augmentation),
the reference ResNet-20 teacher, `--students` built with seed `--seeds` (the same initial
weights as `kd_cifar10`'s runs of that seed), the rows' specs of `benchmarks.kd_cifar10.ROWS`
(warm-ups filled in as there). A term's weight is its full weight: a schedule is read at
the end of training (a warm-up is 0 at the first step, which would hide the scale it warms
up to). Gradient norms are global L2 norms over the student's trainable weights, so adapters
and heads that only the term trains are left out.

Writes `<output_dir>/term_scale<tag>.{json,md}`.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

from benchmarks import common
from benchmarks import kd_cifar10

flags.DEFINE_list("batch_sizes", ["128"], "Batch sizes to measure at (the first N images).")
FLAGS = flags.FLAGS


def full_weight(term, steps):
    """The term's weight once any schedule has run its course (its value at `steps`)."""
    import keras

    weight = term.weight
    if isinstance(weight, keras.optimizers.schedules.LearningRateSchedule):
        return float(weight(steps))
    return float(weight)


def measure(family, row, specs, seed, teacher, x, y, steps_per_epoch):
    """{term name: loss, full weight, gradient norm} and the cross-entropy's, one batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfkd import students

    keras.utils.set_random_seed(seed)
    name, _, width = family.partition(":")
    student = students.build(name, (32, 32, 3), 10, width=float(width or 1.0))
    distiller = kd_cifar10.build_trainer(specs, teacher, student, steps_per_epoch)
    weights = {t.name: full_weight(t, FLAGS.epochs * steps_per_epoch)
               for t in distiller.knowledge}
    distiller.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teaching = distiller.teach(x, y)
    with tf.GradientTape(persistent=True) as tape:
        step = distiller.learn(x, y, None, teaching, training=True)
    variables = student.trainable_variables
    out = {}
    for key, loss in step.losses.items():
        term = key[:-len("_loss")]
        # A term at its full weight; the cross-entropy at the trainer's (a row's `ce=`).
        weight = weights[term] if term in weights else float(loss.weight)
        grads = [g for g in tape.gradient(loss.value, variables) if g is not None]
        norm = float(tf.linalg.global_norm(grads)) if grads else 0.0
        out[term] = {"loss": float(loss.value), "weight": weight,
                     "weighted_loss": weight * float(loss.value), "grad_norm": weight * norm}
    del tape
    ce = out.pop("student")  # its grad_norm is of the weighted cross-entropy
    # Per-sample std of the logits over the classes (Bessel), averaged over the batch: what
    # logit standardisation divides by.
    spread = lambda z: float(np.mean(np.std(np.asarray(z), axis=-1, ddof=1)))
    return {"student": family, "row": row, "specs": list(specs), "seed": seed,
            "batch_size": len(x), "cross_entropy": ce, "terms": out,
            "logit_std": {"teacher": spread(teacher(x, training=False)),
                          "student": spread(step.predictions)},
            "grad_ratio": sum(t["grad_norm"] for t in out.values()) / ce["grad_norm"]}


# (standardize, temperature): soft_targets' own setting and the standardised ones of the rows.
TARGET_SETTINGS = ((False, 4.0), (True, 4.0), (True, 2.0), (True, 1.0), (True, 0.7))


def teacher_targets(teacher, x):
    """How sharp the teacher's soft targets are, raw and z-scored, over images `x`: the mean
    top probability, and the entropy of the renormalised non-argmax probabilities over its
    maximum log(C - 1) (1: the other classes are uniform, no dark knowledge). Why: a z-scored
    logit vector of C classes has a top entry of at most (C - 1) / sqrt(C), 2.85 for 10
    classes (9.9 for 100), which caps how sharp standardised targets can be."""
    import numpy as np

    from tfkd.knowledge import response

    z = teacher.predict(x, batch_size=500, verbose=0).astype("float32")
    out = []
    for standardize, temperature in TARGET_SETTINGS:
        logits = np.asarray(response._standardize(z)) if standardize else z
        p = np.exp(logits / temperature - (logits / temperature).max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        rest = p.copy()
        rest[np.arange(len(p)), p.argmax(1)] = 0.0
        rest /= rest.sum(1, keepdims=True)
        entropy = -(rest * np.log(np.where(rest > 0, rest, 1.0))).sum(1) / np.log(p.shape[1] - 1)
        out.append({"standardize": standardize, "temperature": temperature,
                    "top_probability": float(p.max(1).mean()),
                    "non_target_entropy": float(entropy.mean())})
    return out


def markdown(results, targets=()):
    lines = ["Each row's knowledge terms on a fresh student at the first step, at their full "
             "weight: loss, and the L2 norm of the gradient on the student's weights divided "
             "by the weighted cross-entropy's (`ratio`; a sum over the row's terms). CIFAR-10 "
             "training images, reference ResNet-20 teacher. Per-sample logit std (over the "
             f"classes): teacher {results[0]['logit_std']['teacher']:.2f}, fresh student "
             f"{results[0]['logit_std']['student']:.3f}.", "",
             "| student | batch | row | cross-entropy x weight | term loss x weight | "
             "gradient ratio |",
             "|---|---|---|---|---|---|"]
    for r in results:
        terms = ", ".join(f"{k} {v['loss']:.3g} x {v['weight']:.3g}"
                          for k, v in r["terms"].items())
        ce = r["cross_entropy"]
        lines.append(f"| {r['student']} | {r['batch_size']} | {r['row']} | "
                     f"{ce['loss']:.3f} x {ce['weight']:.3g} | {terms} | "
                     f"{r['grad_ratio']:.2f} |")
    if targets:
        lines += ["", "The teacher's soft targets on the first 2,000 test images (see "
                  "`teacher_targets`):", "",
                  "| logits | T | mean top probability | non-target entropy / log(C - 1) |",
                  "|---|---|---|---|"]
        lines += [f"| {'z-scored' if t['standardize'] else 'raw'} | {t['temperature']:g} | "
                  f"{t['top_probability']:.3f} | {t['non_target_entropy']:.3f} |"
                  for t in targets]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    import keras

    out_dir = common.prepare_run(FLAGS, kd_cifar10.FULL)
    rows = [r for r in FLAGS.rows if r not in ("student_alone", "keras_kl")]
    rows += [f"mix[{m}]" for m in FLAGS.mix]
    specs = {row: kd_cifar10.row_specs(row, FLAGS.mix) for row in rows}
    sizes = [int(b) for b in FLAGS.batch_sizes]
    x_all, y_all = common.load_cifar10("train", max(sizes))
    teacher = keras.saving.load_model(FLAGS.teacher)
    steps_per_epoch = -(-FLAGS.train_size // FLAGS.batch_size)
    results = []
    for seed in [int(s) for s in FLAGS.seeds]:
        for family in FLAGS.students:
            for size in sizes:
                for row in rows:
                    results.append(measure(family, row, specs[row], seed, teacher,
                                           x_all[:size], y_all[:size], steps_per_epoch))
                    print(f"{family} batch {size} {row}: ratio "
                          f"{results[-1]['grad_ratio']:.2f}", flush=True)
    targets = teacher_targets(teacher, common.load_cifar10("test", 2000)[0])
    meta = {"batch_sizes": sizes, "seeds": FLAGS.seeds,
            "steps": FLAGS.epochs * steps_per_epoch,
            "warmup_epochs": FLAGS.warmup_epochs, "machine": common.machine()}
    common.write_results(f"term_scale{FLAGS.tag}",
                         {"meta": meta, "results": results, "teacher_targets": targets},
                         markdown(results, targets), out_dir)


if __name__ == "__main__":
    app.run(main)
