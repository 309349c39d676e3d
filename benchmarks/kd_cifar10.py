"""KD benchmark on real CIFAR-10: every tfkd term and mix against the student alone and Keras'
own distiller, at the configuration the papers use, same budget for every row.

    python -m benchmarks.kd_cifar10                                   # all rows, 2 families
    python -m benchmarks.kd_cifar10 --rows=student_alone,soft_targets --seeds=0 --epochs=1 \\
        --train_size=1000 --test_size=1000                            # a smoke run
    python -m benchmarks.kd_cifar10 --students=mobile_cnn --rows=... --tag=screen   # a part
    python -m benchmarks.kd_cifar10 --merge=a.json,b.json             # parts into one table
    python -m benchmarks.kd_cifar10 --full                            # 50k images, 240 epochs

Budget (every row): SGD with Nesterov momentum 0.9, weight decay 5e-4, cosine decay of the
learning rate from `--learning_rate` (0.1 at batch 128, the papers' 0.05 at 64 scaled
linearly), `--epochs` (10) over the first `--train_size` (10,000) training images with random
flips and 4-pixel reflect-padded crops (`benchmarks.common.train_dataset`), scored on the first
`--test_size` test images after every epoch. Same initial weights, data order and augmentation
for every row of a seed (the augmentation only since 2026-12-03: the committed runs before
then had the same order but unseeded flips and crops, so same-seed differences between rows
also carry run-to-run noise, about 0.9 pt on one seed in schemes_self_ablation_unpaired.md;
the 3-seed means average it). The teacher is the reference ResNet-20
(`../shared/models/cifar10_resnet20_teacher.keras`, 274k parameters); the two student families
are `mobile_cnn` (a plain VGG-style CNN, 71k) and `mobilenet_tiny` at width 0.5 (inverted
residuals, 24k; `--students=mobilenet_tiny:1.0` for the 84k one).

Rows (`ROWS`: name -> tfkd.knowledge specs; `--mix` adds `mix[a;b]` rows):
  student_alone: cross-entropy only.
  keras_kl: `keras.distillation.Distiller` + `LogitsDistillation(loss=KLDivergence())` as
    Keras ships it: 0.5 cross-entropy + 0.5 T^2 KL (its default student_loss_weight), T = 4.
  every tfkd row: cross-entropy (weight 1, or the row's `ce=<w>`) + the row's terms at their
    papers' CIFAR weights.
CPU seconds (`time.process_time`) beside wall seconds per run: wall time is bimodal here.

Writes `<output_dir>/kd_cifar10<tag>.json` and `.md` after every run (a stopped run keeps
its table; `--resume` skips the runs a file already holds).
"""
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

from benchmarks import common

# Feature taps: ResNet-20 and both students name their stage outputs stage1..3 (16/32/64
# teacher channels at 32/16/8 pixels) and their pooled vector `pool`.
ROWS = {
    "student_alone": (),
    "keras_kl": ("keras",),
    "soft_targets": ("soft_targets:temperature=4",),
    # Logit standardisation: the authors' setting (T = 2, KD weight 9), and T = 4 at weight 1
    # (soft_targets' own setting, standardisation the only change).
    "soft_targets_std": ("soft_targets:temperature=2,standardize=True,weight=9",),
    "soft_targets_std_t4": ("soft_targets:temperature=4,standardize=True",),
    # The published comparison itself (Sun et al.'s CIFAR-100 table, mdistiller's weights):
    # KD at cross-entropy 0.1 / KD 0.9, T = 4, against KD + standardisation at 0.1 / 9, T = 2.
    "soft_targets_authors": ("ce=0.1", "soft_targets:temperature=4,weight=0.9"),
    "soft_targets_std_authors": ("ce=0.1", "soft_targets:temperature=2,standardize=True,"
                                           "weight=9"),
    # z-scoring divides the gradient that reaches the student's logits by their std (0.27 on
    # a fresh student in training mode): the term is 13x the cross-entropy at the first step
    # at weight 9 (`term_scale.md`), 134x at ce=0.1. Warmed up as DIST and DKD are:
    "soft_targets_std_authors_warmup": ("ce=0.1", "soft_targets:temperature=2,standardize=True,"
                                                  "weight=warmup(9.0,{warmup_steps})"),
    "soft_targets_std_t4_warmup": ("soft_targets:temperature=4,standardize=True,"
                                   "weight=warmup(1.0,{warmup_steps})",),
    # Standardised logits have std 1, the teacher's raw ones 6.0 here (`term_scale.md`): T = 0.7
    # on them is as sharp on average as T = 4 on the raw logits (soft_targets' own setting).
    "soft_targets_std_t1": ("soft_targets:temperature=1,standardize=True",),
    "soft_targets_std_t07": ("soft_targets:temperature=0.7,standardize=True",),
    "ctkd": ("soft_targets:temperature=learnable,curriculum_steps={warmup_steps}",),
    "dkd": ("dkd:weight=warmup(1.0,{warmup_steps})",),
    "dkd_no_warmup": ("dkd",),
    "dkd_std": ("dkd:weight=warmup(1.0,{warmup_steps}),standardize=True",),
    # MLKD with its batch and class levels normalised (tfkd's default), and with the authors'
    # sums, whose class level grows as (B / C)^2: 164 at batch 128 / 10 classes, 0.41 at their
    # batch 64 / 100 classes (MLKD's docstring; `benchmarks/term_scale.py` measures the loss).
    "mlkd": ("mlkd",),
    "mlkd_reference": ("mlkd:normalize_levels=False",),
    "mlkd_reference_w01": ("mlkd:normalize_levels=False,weight=0.1",),
    "mlkd_reference_warmup": ("mlkd:normalize_levels=False,weight=warmup(1.0,{warmup_steps})",),
    # DIST and PKT at their authors' CIFAR settings (DIST: tau 4, weight 2; PKT: RepDistiller's
    # 30000 on a mean over B x B entries at batch 64, i.e. 30000 / 64 on our per-row mean).
    "dist": ("dist:temperature=4,weight=2",),
    "dist_t1": ("dist",),  # the authors' ImageNet setting (tau 1, weight 1)
    # At tau 4 DIST's gradient on a fresh student is 43x the cross-entropy's (Pearson's
    # correlation is scale-free, and softmax(z / 4) of small initial logits is nearly flat):
    # warmed up as DKD is.
    "dist_warmup": ("dist:temperature=4,weight=warmup(2.0,{warmup_steps})",),
    "hint": ("hint:student_layer=stage2,teacher_layer=stage2",),
    "attention": ("attention:pairs=[(stage2,stage2),(stage3,stage3)]",),
    # At the paper's beta (1000) AT's gradient on a fresh student is 8x the cross-entropy's
    # (`term_scale.md`): warmed up as DIST is.
    "attention_warmup": ("attention:pairs=[(stage2,stage2),(stage3,stage3)],"
                         "weight=warmup(1.0,{warmup_steps})",),
    "rkd": ("rkd:student_layer=pool,teacher_layer=pool",),
    # The paper's gamma (3000 on CIFAR-10): its gradient on a fresh student is then 7.9x the
    # cross-entropy's, as AT's (`term_scale.md`); at weight 1, 0.3%.
    "similarity_preserving": ("similarity_preserving:student_layer=stage3,teacher_layer=stage3,"
                              "weight=3000",),
    "similarity_preserving_w1": ("similarity_preserving:student_layer=stage3,"
                                 "teacher_layer=stage3",),
    "pkt": ("pkt:student_layer=pool,teacher_layer=pool,weight=469",),
    "nst": ("nst:pairs=[(stage3,stage3)],weight=50",),  # RepDistiller: 50
    "nst_w1": ("nst:pairs=[(stage3,stage3)]",),
    "vid": ("vid:pairs=[(stage1,stage1),(stage2,stage2),(stage3,stage3)]",),
    "crd": ("crd:student_layer=pool,teacher_layer=pool,weight=0.8",),
    # ReviewKD warmed up as the authors (20 of 240 epochs; here {warmup_steps}).
    "review_kd": ("review_kd:student_layers=[stage1,stage2,stage3],"
                  "teacher_layers=[stage1,stage2,stage3],weight=warmup(1.0,{warmup_steps})",),
    # mdistiller's CIFAR ReviewKD also reviews the pooled vector (as a 1 x 1 map, its
    # SHAPES [1, 8, 16, 32]).
    "review_kd_pool": ("review_kd:student_layers=[stage1,stage2,stage3,pool],"
                       "teacher_layers=[stage1,stage2,stage3,pool],"
                       "weight=warmup(1.0,{warmup_steps})",),
    # ... at the weight of most of the authors' CIFAR-100 pairs (5; 0.6 to 8 in their script).
    "review_kd_pool_w5": ("review_kd:student_layers=[stage1,stage2,stage3,pool],"
                          "teacher_layers=[stage1,stage2,stage3,pool],"
                          "weight=warmup(5.0,{warmup_steps})",),
    # OFD taps before the ReLU: the teacher's residual sums (post-activation blocks), the
    # student's last BN of the stage (mobile_cnn's names); stages weighted 1/2^(n-1-k).
    "ofd": ("ofd:student_layer=s2b_bn,teacher_layer=add_5,weight=0.5,name=ofd_stage2",
            "ofd:student_layer=s3b_bn,teacher_layer=add_8,name=ofd_stage3"),
}
# The goal "standardisation on top of SoftTargets >= SoftTargets": row -> its baseline row.
STANDARDIZED_ROWS = {"soft_targets_std": "soft_targets", "soft_targets_std_t4": "soft_targets",
                     "soft_targets_std_t1": "soft_targets", "soft_targets_std_t07": "soft_targets",
                     "soft_targets_std_authors": "soft_targets_authors",
                     "soft_targets_std_authors_warmup": "soft_targets_authors",
                     "soft_targets_std_t4_warmup": "soft_targets"}
# The goal "CRD or ReviewKD >= the best existing feature term" is judged against these.
EXISTING_FEATURE_ROWS = ("hint", "attention", "attention_warmup", "rkd",
                         "similarity_preserving", "similarity_preserving_w1")
NEW_FEATURE_ROWS = ("pkt", "nst", "nst_w1", "vid", "ofd")
FAMILIES = ("mobile_cnn", "mobilenet_tiny")
# A row's `ce=<w>` entry sets the cross-entropy's weight (1 when absent); not a term.
CE_WEIGHT = "ce="
# mobilenet_tiny's depthwise blocks cost 8x mobile_cnn's CPU per step here (0.75 vs 0.09 s at
# batch 128, measured); at width 0.5 (24k parameters) 0.39 s, which fits 3 seeds in a session.
DEFAULT_STUDENTS = ("mobile_cnn", "mobilenet_tiny:0.5")
FULL = {"train_size": 50000, "test_size": 10000, "epochs": 240, "batch_size": 64,
        "learning_rate": 0.05}

flags.DEFINE_string("data", str(common.SHARED / "data" / "cifar10.npz"), "CIFAR-10 .npz.")
flags.DEFINE_string("teacher", str(common.TEACHER_PATH), "Teacher .keras file.")
flags.DEFINE_integer("train_size", 10000, "First N training images (the file is shuffled).")
flags.DEFINE_integer("test_size", 10000, "First N test images.")
flags.DEFINE_bool("full", False, "The papers' budget on all 50,000 images (a GPU): " + str(FULL))
flags.DEFINE_integer("epochs", 10, "Epochs per run.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Peak learning rate (SGD, cosine decay).")
flags.DEFINE_float("weight_decay", 5e-4, "SGD weight decay.")
flags.DEFINE_float("warmup_epochs", 2.0, "Warm-up of DKD's weight and CTKD's curriculum "
                                         "({warmup_steps} in ROWS); DKD warms up over 20 of "
                                         "its 240 epochs.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_list("students", list(DEFAULT_STUDENTS),
                  "Students, `family[:width]`; families: " + ", ".join(FAMILIES) + ".")
flags.DEFINE_list("rows", list(ROWS), "Rows: " + ", ".join(ROWS) + ".")
flags.DEFINE_multi_string("mix", [], "A mix row: specs joined by ';' "
                                     "(e.g. 'soft_targets:standardize=True;review_kd:...').")
flags.DEFINE_string("tag", "", "Suffix of the result files (kd_cifar10<tag>.json).")
flags.DEFINE_bool("resume", False, "Skip the runs the result file already holds.")
flags.DEFINE_string("output_dir", str(common.RESULTS), "Results folder.")
flags.DEFINE_list("merge", None, "Instead of training: merge these result JSON files (same "
                                 "budget) into <output_dir>/kd_cifar10<tag>.{json,md}.")
FLAGS = flags.FLAGS

BUDGET = ("train_size", "test_size", "epochs", "batch_size", "learning_rate", "weight_decay",
          "warmup_epochs")


def row_specs(row, mixes):
    """The specs of a row: ROWS[row], or the terms of a `mix[...]` row."""
    if row in ROWS:
        return ROWS[row]
    if row.startswith("mix[") and row.endswith("]") and row[4:-1] in mixes:
        return tuple(row[4:-1].split(";"))
    raise app.UsageError(f"Unknown row {row!r}; use {', '.join(ROWS)} or --mix.")


def build_trainer(specs, teacher, student, steps_per_epoch):
    """The model to `fit`: the student itself, Keras' Distiller, or a tfkd Distiller."""
    import keras

    import tfkd

    if not specs:
        return student
    if specs == ("keras",):
        return keras.distillation.Distiller(
            teacher=teacher, student=student, student_loss_weight=0.5,
            distillation_losses=[keras.distillation.LogitsDistillation(
                temperature=4.0, loss=keras.losses.KLDivergence())])
    fill = {"warmup_steps": max(1, round(FLAGS.warmup_epochs * steps_per_epoch))}
    ce = [float(s[len(CE_WEIGHT):]) for s in specs if s.startswith(CE_WEIGHT)]
    terms = [tfkd.knowledge.get(spec.format(**fill)) for spec in specs
             if not spec.startswith(CE_WEIGHT)]
    if student is None:  # only checking the specs
        return terms
    return tfkd.Distiller(student, teacher, knowledge=terms,
                          student_loss_weight=ce[0] if ce else 1.0)


def run_one(family, row, specs, seed, teacher, train, test):
    import keras
    import numpy as np

    from tfkd import students

    keras.utils.set_random_seed(seed)
    name, _, width = family.partition(":")
    student = students.build(name, (32, 32, 3), 10, width=float(width or 1.0))
    steps_per_epoch = -(-len(train[0]) // FLAGS.batch_size)
    trainer = build_trainer(specs, teacher, student, steps_per_epoch)
    trainer.compile(optimizer=common.cosine_sgd(FLAGS.epochs * steps_per_epoch,
                                                FLAGS.learning_rate, FLAGS.weight_decay),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ds = common.train_dataset(*train, batch_size=FLAGS.batch_size, seed=seed)
    x_test = test[0]
    accuracies = []

    class TestAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logits = student.predict(x_test, batch_size=500, verbose=0)
            accuracies.append(float(np.mean(np.argmax(logits, -1) == test[1])))

    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(ds, epochs=FLAGS.epochs, verbose=0, callbacks=[TestAccuracy()])
    return {"student": family, "row": row, "specs": list(specs), "seed": seed,
            "final": accuracies[-1], "best": max(accuracies), "per_epoch": accuracies,
            "seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "params": student.count_params()}


def summarise(runs):
    import numpy as np

    table = {}
    for key in dict.fromkeys((r["student"], r["row"]) for r in runs):
        rs = [r for r in runs if (r["student"], r["row"]) == key]
        stat = lambda k: [float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))]
        table["/".join(key)] = {"student": key[0], "row": key[1], "final": stat("final"),
                                "best": stat("best"), "cpu_seconds": stat("cpu_seconds"),
                                "seeds": len(rs), "specs": rs[0]["specs"],
                                "final_by_seed": {str(r["seed"]): r["final"] for r in rs}}
    return table


def vs_alone(table, v):
    """`v`'s mean final accuracy minus the student alone's on the same seeds (a 1-seed screen
    is compared with the alone run of its seed, not with the 3-seed mean), or None."""
    alone = table.get(f"{v['student']}/student_alone")
    if alone is None or not set(v["final_by_seed"]) <= set(alone["final_by_seed"]):
        return None
    same = [alone["final_by_seed"][s] for s in v["final_by_seed"]]
    return v["final"][0] - sum(same) / len(same)


def goals(table):
    """The issue's goals per family: the best tfkd row (all seeds) >= alone + 3 pt and >=
    keras_kl + 1.5 pt; standardised soft targets >= soft targets; CRD or ReviewKD >= the
    best of the older feature terms."""
    out = {}
    for family in dict.fromkeys(v["student"] for v in table.values()):
        rows = {v["row"]: v for v in table.values() if v["student"] == family}
        seeds = max(v["seeds"] for v in rows.values())
        acc = {k: 100 * v["final"][0] for k, v in rows.items() if v["seeds"] == seeds}
        tfkd_rows = {k: a for k, a in acc.items() if k not in ("student_alone", "keras_kl")}
        g = {"seeds": seeds}
        if tfkd_rows and "student_alone" in acc:
            best = max(tfkd_rows, key=tfkd_rows.get)
            g.update(best_row=best, best=tfkd_rows[best],
                     vs_alone_pt=tfkd_rows[best] - acc["student_alone"])
            g["met_alone_plus_3"] = g["vs_alone_pt"] >= 3.0
            if "keras_kl" in acc:
                g["vs_keras_pt"] = tfkd_rows[best] - acc["keras_kl"]
                g["met_keras_plus_1_5"] = g["vs_keras_pt"] >= 1.5
        std = {k: acc[k] - acc[base] for k, base in STANDARDIZED_ROWS.items()
               if k in acc and base in acc}
        if std:
            g["std_row"] = max(std, key=std.get)
            g["std_vs_soft_targets_pt"] = std[g["std_row"]]
        # The feature / relation terms tfkd had before CRD and ReviewKD came (the issue's
        # "existing" ones), and every other one, the new PKT, NST, VID, OFD included.
        existing = [acc[k] for k in EXISTING_FEATURE_ROWS if k in acc]
        others = [acc[k] for k in EXISTING_FEATURE_ROWS + NEW_FEATURE_ROWS if k in acc]
        newer = [a for k, a in acc.items() if k.startswith(("crd", "review_kd"))]
        if existing and newer:
            g["crd_or_review_vs_best_feature_pt"] = max(newer) - max(existing)
        if others and newer:
            g["crd_or_review_vs_every_feature_pt"] = max(newer) - max(others)
        out[family] = g
    return out


def markdown(table, meta):
    lines = [f"CIFAR-10, {meta['train_size']} train / {meta['test_size']} test images, "
             f"{meta['epochs']} epochs, batch {meta['batch_size']}, SGD (Nesterov 0.9, weight "
             f"decay {meta['weight_decay']}) with cosine decay from {meta['learning_rate']}; "
             f"teacher ResNet-20 ({meta['teacher_params']} params, "
             f"{100 * meta['teacher_accuracy']:.2f}% on these test images); final-epoch test "
             "accuracy (%), mean ± std over seeds.", "",
             "| student | row | terms | seeds | final acc | best acc | vs alone (same seeds) | "
             "CPU s / run |",
             "|---|---|---|---|---|---|---|---|"]
    for v in table.values():
        delta = vs_alone(table, v)
        delta = "-" if delta is None else f"{100 * delta:+.2f}"
        terms = "; ".join(v["specs"]).replace("|", "/") or "cross-entropy"
        lines.append(f"| {v['student']} | {v['row']} | `{terms}` | {v['seeds']} | "
                     f"{100 * v['final'][0]:.2f} ± {100 * v['final'][1]:.2f} | "
                     f"{100 * v['best'][0]:.2f} ± {100 * v['best'][1]:.2f} | {delta} | "
                     f"{v['cpu_seconds'][0]:.0f} |")
    for family, g in goals(table).items():
        if "best_row" not in g:
            continue
        probe = "" if family in DEFAULT_STUDENTS else " (a probe, not one of the goal's families)"
        text = (f"{family}{probe}: best tfkd row `{g['best_row']}` {g['best']:.2f}%, "
                f"{g['vs_alone_pt']:+.2f} pt vs alone (goal +3.0: "
                f"{'met' if g['met_alone_plus_3'] else 'NOT met'})")
        if "vs_keras_pt" in g:
            text += (f", {g['vs_keras_pt']:+.2f} pt vs keras_kl (goal +1.5: "
                     f"{'met' if g['met_keras_plus_1_5'] else 'NOT met'})")
        if "std_vs_soft_targets_pt" in g:
            text += (f"; standardize vs soft targets {g['std_vs_soft_targets_pt']:+.2f} pt "
                     f"(`{g['std_row']}` vs `{STANDARDIZED_ROWS[g['std_row']]}`)")
        if "crd_or_review_vs_best_feature_pt" in g:
            text += (f"; CRD / ReviewKD vs the best existing feature term ("
                     f"{', '.join(EXISTING_FEATURE_ROWS)}) "
                     f"{g['crd_or_review_vs_best_feature_pt']:+.2f} pt")
        if "crd_or_review_vs_every_feature_pt" in g:
            text += (f", vs every other feature term (with {', '.join(NEW_FEATURE_ROWS)}) "
                     f"{g['crd_or_review_vs_every_feature_pt']:+.2f} pt")
        lines += ["", text + f" ({g['seeds']} seeds)."]
    return "\n".join(lines) + "\n"


def write(runs, meta, stem):
    table = summarise(runs)
    payload = {"meta": meta, "summary": table, "goals": goals(table), "runs": runs}
    common.write_results(stem.name, payload, markdown(table, meta), stem.parent)


def merge(paths, stem):
    results = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    for r, p in zip(results[1:], paths[1:]):
        if any(r["meta"][k] != results[0]["meta"][k] for k in BUDGET):
            raise app.UsageError(f"{p} was run with another budget than {paths[0]}.")
    runs = {(r["student"], r["row"], r["seed"]): r for res in results for r in res["runs"]}
    write(list(runs.values()), dict(results[0]["meta"], merged_from=list(paths)), stem)


def main(argv):
    del argv
    out_dir = common.prepare_run(FLAGS, FULL)
    stem = out_dir / f"kd_cifar10{FLAGS.tag}"
    if FLAGS.merge:
        return merge(FLAGS.merge, stem)
    import keras
    import numpy as np

    unknown = {s for s in FLAGS.students if s.partition(":")[0] not in FAMILIES}
    if unknown:
        raise app.UsageError(f"Unknown --students {sorted(unknown)}; use {', '.join(FAMILIES)}.")
    rows = list(FLAGS.rows) + [f"mix[{m}]" for m in FLAGS.mix]
    specs = {row: row_specs(row, FLAGS.mix) for row in rows}
    for row in rows:  # a bad spec fails here, not after hours of other rows
        build_trainer(specs[row], None, None, 1) if specs[row] != ("keras",) else None
    train = common.load_cifar10("train", FLAGS.train_size)
    test = common.load_cifar10("test", FLAGS.test_size)
    teacher = keras.saving.load_model(FLAGS.teacher)
    teacher_acc = float(np.mean(np.argmax(teacher.predict(test[0], batch_size=500, verbose=0),
                                          -1) == test[1]))
    meta = {**{k: getattr(FLAGS, k) for k in BUDGET}, "train_size": len(train[0]),
            "test_size": len(test[0]), "teacher_params": teacher.count_params(),
            "teacher_accuracy": teacher_acc, "machine": common.machine()}
    runs = []
    if FLAGS.resume and stem.with_suffix(".json").exists():
        runs = json.loads(stem.with_suffix(".json").read_text())["runs"]
    done = {(r["student"], r["row"], r["seed"]) for r in runs}
    for seed in [int(s) for s in FLAGS.seeds]:
        for family in FLAGS.students:
            for row in rows:
                if (family, row, seed) in done:
                    continue
                result = run_one(family, row, specs[row], seed, teacher, train, test)
                runs.append(result)
                print(f"{family} {row} seed {seed}: final {result['final']:.4f} best "
                      f"{result['best']:.4f} ({result['cpu_seconds']:.0f} CPU s, "
                      f"{result['seconds']:.0f} s)", flush=True)
                write(runs, meta, stem)


if __name__ == "__main__":
    app.run(main)
