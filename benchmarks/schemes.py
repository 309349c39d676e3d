"""The distillation schemes of `tfkd.schemes`, each against its natural baseline, on real data,
at the budget of the fair KD benchmark (`benchmarks/kd_cifar10.py`).

    python -m benchmarks.schemes                                    # hours on 2 CPU cores
    python -m benchmarks.schemes --train_size=512 --test_size=512 --epochs=1 --df_steps=20 \
        --seeds=0                                                    # a smoke run
    python -m benchmarks.schemes --rows=mutual,self --seeds=0,1 --tag=_part --resume

CIFAR-10 rows: SGD (Nesterov 0.9, weight decay 5e-4) with cosine decay from 0.1, batch 128,
`--epochs` (10) over the first `--train_size` (10,000) training images with flips and crops,
final-epoch accuracy on the first `--test_size` (10,000) test images: the configuration and
students of `kd_cifar10` (`tfkd.students` `mobile_cnn`), so a scheme's baseline is a row of
that table. Same initial weights and the same stream of batches (order and augmentation) for
baseline and scheme of a seed. (Tables written before the ablation rows, schemes.md,
schemes_e20/_gap/_overfit.md, shared one dataset between the runs of a process, so a scheme
saw later epochs of the stream than its baseline, and unseeded flips and crops: unpaired.)
  mutual       two mobile_cnn students trained alone | the same two by MutualLearning (T=1)
  self         mobile_cnn alone | SelfDistillation (BYOT: heads on stage1, stage2; hint stage3)
  multi        KD from the better single teacher | MultiTeacher (confidence weighting) over the
               reference ResNet-20 and a mobile_cnn x2 (280k) teacher trained here
  assistant    direct KD ResNet-20 (274k) -> mobile_cnn x0.25 (4.8k, a 57x gap) | the same
               through a mobile_cnn x1 (71k) TeacherAssistant
  adversarial  SoftTargets KD | AdversarialDistillation (SoftTargets + a logit discriminator)
  self_ablation         diagnosis of SelfDistillation: mobile_cnn alone, then SELF_VARIANTS
               (the head losses scaled by 0, 0.1, 0.3, 1; a stage2 head only; heads 3 convs
               deep at 1 and 0.1; `--self_variants` picks), each with its
               test / training / early-exit accuracy, and for every head-carrying run the
               cosine between the backbone gradient of the student's own task loss and that
               of the heads' losses (on 512 fixed training images, each epoch)
  adversarial_ablation  diagnosis of AdversarialDistillation: SoftTargets KD, then
               adversarial_weight in ADVERSARIAL_WEIGHTS (0 = the game runs, the student
               ignores it), with the discriminator's accuracy and loss each epoch
  data_free    MNIST: a LeNet-5 (BN) teacher trained on the images | a student trained by
               DataFree on generated images only (its test accuracy, and the ratio to the
               teacher's; DAFL reports ~98% of the teacher on MNIST). Adam, its own budget.
KD rows use SoftTargets(T=4) with the task loss at weight 1, as in kd_cifar10. Writes
`<output_dir>/schemes<tag>.json` and `.md` after every run; `--resume` skips finished runs.
"""
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

from benchmarks import common

ROWS = ("mutual", "self", "multi", "assistant", "adversarial", "data_free", "self_ablation",
        "adversarial_ablation")
# Diagnosis rows (not schemes against baselines): one model per variant, same seed and data.
# (name, factor on all three BYOT head weights 0.7 / 0.3 / 0.03, stages with a head,
#  head_depth: conv layers per head)
SELF_VARIANTS = (("heads_off", 0.0, ("stage1", "stage2"), 1),
                 ("heads_x0.1", 0.1, ("stage1", "stage2"), 1),
                 ("heads_x0.3", 0.3, ("stage1", "stage2"), 1),
                 ("byot", 1.0, ("stage1", "stage2"), 1),
                 ("stage2_head_only", 1.0, ("stage2",), 1),
                 ("byot_head_depth3", 1.0, ("stage1", "stage2"), 3),
                 ("heads_x0.1_head_depth3", 0.1, ("stage1", "stage2"), 3))
ADVERSARIAL_WEIGHTS = (0.0, 0.1, 1.0)

flags.DEFINE_integer("train_size", 10000, "First N CIFAR-10 training images.")
flags.DEFINE_integer("test_size", 10000, "First N CIFAR-10 test images.")
flags.DEFINE_integer("epochs", 10, "Epochs of every CIFAR-10 run (each TeacherAssistant stage).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Peak SGD learning rate (cosine decay).")
flags.DEFINE_float("weight_decay", 5e-4, "SGD weight decay.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
flags.DEFINE_list("rows", list(ROWS), "Rows to run: " + ", ".join(ROWS) + ".")
flags.DEFINE_string("tag", "", "Suffix of the result files (schemes<tag>.json).")
flags.DEFINE_bool("resume", False, "Skip the (row, seed) runs the result file already holds.")
flags.DEFINE_integer("mnist_train_size", 60000, "MNIST images for the data-free teacher.")
flags.DEFINE_integer("teacher_epochs", 3, "Epochs of the MNIST teacher.")
flags.DEFINE_integer("df_steps", 2000, "DataFree steps (batches of --df_batch generated images).")
flags.DEFINE_integer("df_batch", 128, "Generated images per DataFree step.")
flags.DEFINE_list("self_variants", [v[0] for v in SELF_VARIANTS],
                  "The SELF_VARIANTS self_ablation runs (after the student alone).")
flags.DEFINE_string("output_dir", str(common.RESULTS), "Results folder.")
FLAGS = flags.FLAGS
BUDGET = ("train_size", "test_size", "epochs", "batch_size", "learning_rate", "weight_decay",
          "mnist_train_size", "teacher_epochs", "df_steps", "df_batch")


def student(width, seed, name):
    """`tfkd.students` mobile_cnn at `width` (taps stage1..3, pool), initialised by `seed`."""
    import keras

    from tfkd import students

    keras.utils.set_random_seed(seed)
    # The zoo's builder itself (students.build's first argument is the zoo name): named
    # models, as MutualLearning and TeacherAssistant key their metrics by model name.
    return students.STUDENTS["mobile_cnn"](input_shape=(32, 32, 3), num_classes=10,
                                           width=width, front_end=None, bn_momentum=0.99,
                                           name=name)


def lenet(name, width=6, seed=0):
    """LeNet-5 with BatchNorm for 28x28x1 inputs in [0, 1] (DAFL's MNIST teacher shape)."""
    import keras

    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for i, channels in enumerate([width, int(width * 16 / 6)], start=1):
        h = keras.layers.Conv2D(channels, 5, padding="same", use_bias=False,
                                kernel_initializer=init, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        h = keras.layers.MaxPooling2D(name=f"pool{i}")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(int(width * 20), activation="relu", name="fc1")(h)
    h = keras.layers.Dense(int(width * 14), activation="relu", name="features")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name=name)


def _ce():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _opt(data):
    return common.cosine_sgd(FLAGS.epochs * data["steps_per_epoch"], FLAGS.learning_rate,
                             FLAGS.weight_decay)


def _acc(model, x, y):
    import numpy as np

    return float(np.mean(np.argmax(model.predict(x, batch_size=500, verbose=0), -1) == y))


def _train(data):
    """A fresh training dataset: the same stream of batches for every model built with the
    same seed (`student` sets the global seed the pipeline's shuffle and keys derive from)."""
    return common.train_dataset(*data["train_images"], FLAGS.batch_size, seed=0)


def _fit(model, data):
    return model.fit(_train(data), epochs=FLAGS.epochs, verbose=0)


def _alone(model, data):
    model.compile(_opt(data), _ce())
    _fit(model, data)
    return model


def _kd(model, teacher, data):
    import tfkd

    d = tfkd.Distiller(model, teacher, knowledge=[tfkd.knowledge.SoftTargets(4.0)])
    d.compile(_opt(data), _ce())
    _fit(d, data)
    return model


def _train_acc(model, data):
    """Accuracy on (at most 10,000 of) the un-augmented training images: DML and BYOT are
    regularisers, and what they can gain depends on how far the student overfits."""
    x, y = data["train_images"]
    return _acc(model, x[:10000], y[:10000])


def _interference(sd, x, y):
    """{head key: cosine between the gradients, w.r.t. the student's weights, of the student's
    own task loss and of that head's losses (task + KD + hint)}, and the heads' total, with
    each head's gradient norm relative to the student loss's. One training-mode pass on
    (x, y); the BatchNorm statistics it moves are restored, so training is not disturbed.
    A negative cosine means the heads push the shared stages against the final classifier."""
    import numpy as np
    import tensorflow as tf

    state = [v.numpy() for v in sd.student.non_trainable_variables]
    variables = sd.student.trainable_variables
    keys = [s.replace("/", "_") for s in sd.stages]
    with tf.GradientTape(persistent=True) as tape:
        # The trainer's own normalisation of a step's losses into weighted(value, weight).
        losses = sd._collect(sd.learn(x, y, None, None, training=True))
        value = lambda item: item.weight * item.value
        main = value(losses["student_loss"])
        parts = {k: tf.add_n([value(v) for n, v in losses.items() if n.startswith(k + "_")])
                 for k in keys}
        parts["all_heads"] = tf.add_n(list(parts.values()))
    flat = lambda grads: np.concatenate(
        [np.zeros(int(np.prod(v.shape))) if g is None else np.ravel(g.numpy())
         for g, v in zip(grads, variables)])
    g_main = flat(tape.gradient(main, variables))
    out = {}
    for key, loss in parts.items():
        g = flat(tape.gradient(loss, variables))
        n = np.linalg.norm(g)
        out[key] = {"cosine": float(g @ g_main / max(n * np.linalg.norm(g_main), 1e-12)),
                    "norm_ratio": float(n / max(np.linalg.norm(g_main), 1e-12))}
    del tape
    for v, saved in zip(sd.student.non_trainable_variables, state):
        v.assign(saved)
    return out


def row_self_ablation(data, seed):
    import keras
    import tfkd

    x, y = data["test"]
    xt, yt = data["train_images"]
    probe = (xt[-512:], yt[-512:])  # fixed images, the same for every variant
    alone = _alone(student(1.0, seed, "student"), data)
    variants = [{"variant": "alone", "acc": _acc(alone, x, y),
                 "train_acc": _train_acc(alone, data)}]
    for name, factor, stages, depth in SELF_VARIANTS:
        if name not in FLAGS.self_variants:
            continue
        model = student(1.0, seed, "student")
        sd = tfkd.schemes.SelfDistillation(model, list(stages), hint_layer="stage3",
                                           head_loss_weight=0.7 * factor,
                                           kd_weight=0.3 * factor, hint_weight=0.03 * factor,
                                           head_depth=depth)
        sd.compile(_opt(data), _ce())
        trace = []
        if factor:
            log = lambda *_: trace.append(_interference(sd, *probe))
            callbacks = [keras.callbacks.LambdaCallback(on_train_begin=log, on_epoch_end=log)]
        else:
            callbacks = []
        sd.fit(_train(data), epochs=FLAGS.epochs, verbose=0, callbacks=callbacks)
        variants.append({"variant": name, "acc": _acc(model, x, y),
                         "train_acc": _train_acc(model, data),
                         "early_exit_acc": _acc(sd.early_exit(stages[-1]), x, y),
                         "interference": trace})
        print(variants[-1], flush=True)
    return {"baseline": "mobile_cnn alone", "variants": variants}


def row_adversarial_ablation(data, seed):
    import keras
    import tfkd

    x, y = data["test"]
    plain = _kd(student(1.0, seed, "student"), data["teacher"], data)
    variants = [{"variant": "soft_targets_kd", "acc": _acc(plain, x, y),
                 "train_acc": _train_acc(plain, data)}]
    for weight in ADVERSARIAL_WEIGHTS:
        model = student(1.0, seed, "student")
        adv = tfkd.schemes.AdversarialDistillation(
            model, data["teacher"], knowledge=[tfkd.knowledge.SoftTargets(4.0)],
            adversarial_weight=weight)
        adv.compile(_opt(data), _ce(), discriminator_optimizer=keras.optimizers.Adam(1e-4))
        history = _fit(adv, data).history
        variants.append({
            "variant": f"adversarial_weight={weight:g}", "acc": _acc(model, x, y),
            "train_acc": _train_acc(model, data),
            **{k: [round(float(v), 4) for v in history[k]]
               for k in ("discriminator_accuracy", "discriminator_loss", "adversarial_loss",
                         "soft_targets_loss") if k in history}})
        print(variants[-1], flush=True)
    return {"baseline": "SoftTargets KD", "variants": variants}


def row_mutual(data, seed):
    import tfkd

    x, y = data["test"]
    alone = [_alone(student(1.0, seed + k, f"s{k}"), data) for k in (0, 1)]
    pair = [student(1.0, seed + k, f"s{k}") for k in (0, 1)]
    ml = tfkd.schemes.MutualLearning(pair, temperature=1.0)
    ml.compile(_opt(data), _ce())
    _fit(ml, data)
    return {"baseline": "two mobile_cnn trained alone",
            "baseline_acc": [_acc(s, x, y) for s in alone],
            "baseline_train_acc": [_train_acc(s, data) for s in alone],
            "scheme": "MutualLearning(T=1)", "scheme_acc": [_acc(s, x, y) for s in pair],
            "scheme_train_acc": [_train_acc(s, data) for s in pair]}


def row_self(data, seed):
    import tfkd

    x, y = data["test"]
    alone = _alone(student(1.0, seed, "student"), data)
    model = student(1.0, seed, "student")
    sd = tfkd.schemes.SelfDistillation(model, ["stage1", "stage2"], hint_layer="stage3")
    sd.compile(_opt(data), _ce())
    _fit(sd, data)
    return {"baseline": "mobile_cnn alone", "baseline_acc": _acc(alone, x, y),
            "baseline_train_acc": _train_acc(alone, data),
            "scheme": "SelfDistillation(stage1, stage2 heads; stage3 hint)",
            "scheme_acc": _acc(model, x, y), "scheme_train_acc": _train_acc(model, data),
            "early_exit_acc": _acc(sd.early_exit("stage2"), x, y)}


def _second_teacher(data):
    """A mobile_cnn x2 teacher trained alone at this budget (seed 100), once per process."""
    if "second" not in data:
        data["second"] = _alone(student(2.0, 100, "mobile_cnn_x2_teacher"), data)
    return data["second"]


def row_multi(data, seed):
    import tfkd

    x, y = data["test"]
    teachers = [data["teacher"], _second_teacher(data)]
    accs = {t.name: _acc(t, x, y) for t in teachers}
    best = max(teachers, key=lambda t: accs[t.name])
    single = _acc(_kd(student(1.0, seed, "student"), best, data), x, y)
    model = student(1.0, seed, "student")
    mt = tfkd.schemes.MultiTeacher(model, teachers, weighting="confidence", temperature=4.0)
    mt.compile(_opt(data), _ce())
    _fit(mt, data)
    return {"baseline": f"KD from the better single teacher ({best.name})",
            "baseline_acc": single, "scheme": "MultiTeacher(confidence, T=4)",
            "scheme_acc": _acc(model, x, y), "teacher_acc": accs}


def row_assistant(data, seed):
    import tfkd

    x, y = data["test"]
    direct = _acc(_kd(student(0.25, seed, "student"), data["teacher"], data), x, y)
    model = student(0.25, seed, "student")
    assistant = student(1.0, seed + 1, "assistant")
    ta = tfkd.schemes.TeacherAssistant(data["teacher"], [assistant], model,
                                       knowledge=[tfkd.knowledge.SoftTargets(4.0)])
    ta.compile(_opt(data), _ce())
    ta.fit(_train(data), epochs=FLAGS.epochs, verbose=0)
    return {"baseline": f"direct KD ResNet-20 ({data['teacher'].count_params()}) -> "
                        f"mobile_cnn x0.25 ({model.count_params()})",
            "baseline_acc": direct,
            "scheme": f"TeacherAssistant via mobile_cnn x1 ({assistant.count_params()})",
            "scheme_acc": _acc(model, x, y), "assistant_acc": _acc(assistant, x, y)}


def row_adversarial(data, seed):
    import keras
    import tfkd

    x, y = data["test"]
    plain = _acc(_kd(student(1.0, seed, "student"), data["teacher"], data), x, y)
    model = student(1.0, seed, "student")
    adv = tfkd.schemes.AdversarialDistillation(
        model, data["teacher"], knowledge=[tfkd.knowledge.SoftTargets(4.0)],
        adversarial_weight=0.1)
    adv.compile(_opt(data), _ce(), discriminator_optimizer=keras.optimizers.Adam(1e-4))
    _fit(adv, data)
    return {"baseline": "SoftTargets KD", "baseline_acc": plain,
            "scheme": "AdversarialDistillation(SoftTargets + D on logits)",
            "scheme_acc": _acc(model, x, y)}


def row_data_free(_, seed):
    import keras
    import numpy as np
    import tfkd

    with np.load(common.SHARED / "data" / "mnist.npz") as d:
        x = d["x_train"][:FLAGS.mnist_train_size, ..., None].astype("float32") / 255.0
        y = d["y_train"][:FLAGS.mnist_train_size].astype("int32")
        x_test = d["x_test"][..., None].astype("float32") / 255.0
        y_test = d["y_test"].astype("int32")
    keras.utils.set_random_seed(9 + seed)
    teacher = lenet("lenet5_teacher", width=6, seed=9)
    teacher.compile(keras.optimizers.Adam(1e-3), _ce())
    teacher.fit(x, y, epochs=FLAGS.teacher_epochs, batch_size=128, verbose=0)
    student = lenet("lenet5_half_student", width=3, seed=10)
    df = tfkd.schemes.DataFree(teacher, student, batch_size=FLAGS.df_batch, bn_weight=10.0,
                               activation_weight=0.1, activation_layer="features",
                               generator_width=32)
    df.compile(optimizer=keras.optimizers.Adam(1e-3),
               generator_optimizer=keras.optimizers.Adam(1e-3))
    steps = max(1, FLAGS.df_steps)
    epochs = max(1, steps // 100)
    df.fit(epochs=epochs, steps_per_epoch=max(1, steps // epochs), verbose=0)
    t_acc, s_acc = _acc(teacher, x_test, y_test), _acc(student, x_test, y_test)
    return {"baseline": "LeNet-5 teacher trained on the images (test accuracy)",
            "baseline_acc": t_acc, "scheme": "DataFree student (half-width LeNet-5), no image",
            "scheme_acc": s_acc, "ratio_to_teacher": s_acc / max(t_acc, 1e-9),
            "steps": steps, "generated_images": steps * FLAGS.df_batch}


def _mean_std(values):
    import numpy as np

    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def markdown(runs, meta):
    import numpy as np

    lines = [f"CIFAR-10 rows: {meta['train_size']} train / {meta['test_size']} test images, "
             f"{meta['epochs']} epochs, batch {meta['batch_size']}, SGD (Nesterov 0.9, weight "
             f"decay {meta['weight_decay']}) with cosine decay from {meta['learning_rate']}; "
             "final-epoch test accuracy (%), mean ± std over seeds (for mutual: over both "
             "students and seeds). data_free: MNIST, its own budget.", "",
             "| row | seeds | baseline | baseline acc | scheme | scheme acc | scheme - baseline "
             "(pt) | train acc: baseline / scheme | CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    flat = lambda v: v if isinstance(v, list) else [v]
    for row in dict.fromkeys(r["row"] for r in runs if "variants" not in r):
        rs = [r for r in runs if r["row"] == row]
        base = [a for r in rs for a in flat(r["baseline_acc"])]
        ours = [a for r in rs for a in flat(r["scheme_acc"])]
        train = "-"  # runs from before the training accuracy was recorded have none
        if all("baseline_train_acc" in r for r in rs):
            train = " / ".join(
                _mean_std([a for r in rs for a in flat(r[k])])
                for k in ("baseline_train_acc", "scheme_train_acc"))
        lines.append(f"| {row} | {len(rs)} | {rs[0]['baseline']} | {_mean_std(base)} | "
                     f"{rs[0]['scheme']} | {_mean_std(ours)} | "
                     f"{100 * (np.mean(ours) - np.mean(base)):+.2f} | {train} | "
                     f"{np.mean([r['cpu_seconds'] for r in rs]):.0f} |")
    return "\n".join(lines + ablation_markdown([r for r in runs if "variants" in r]))


def ablation_markdown(runs):
    """The diagnosis rows: per variant, accuracies (mean over seeds), the change against the
    row's first variant (its baseline, same seeds), and the variant's own diagnostics."""
    import numpy as np

    lines = []
    for row in dict.fromkeys(r["row"] for r in runs):
        rs = [r for r in runs if r["row"] == row]
        lines += ["", f"### {row} ({len(rs)} seed{'s' * (len(rs) > 1)}: "
                      f"{', '.join(str(r['seed']) for r in rs)})", "",
                  "| variant | test acc | vs " + rs[0]["variants"][0]["variant"]
                  + " (pt) | train acc | diagnostics (mean over seeds) |", "|---|---|---|---|---|"]
        names = list(dict.fromkeys(v["variant"] for r in rs for v in r["variants"]))
        pick = lambda name: [v for r in rs for v in r["variants"] if v["variant"] == name]
        base = np.mean([v["acc"] for v in pick(names[0])])
        for name in names:
            vs = pick(name)
            acc = [v["acc"] for v in vs]
            notes = []
            if "early_exit_acc" in vs[0]:
                notes.append(f"early exit {_mean_std([v['early_exit_acc'] for v in vs])}")
            if vs[0].get("interference"):
                for key in vs[0]["interference"][0]:
                    cos = np.mean([[t[key]["cosine"] for t in v["interference"]] for v in vs], 0)
                    ratio = np.mean([[t[key]["norm_ratio"] for t in v["interference"]]
                                     for v in vs], 0)
                    notes.append(f"{key}: cosine start {cos[0]:+.2f}, epoch 1 {cos[1]:+.2f}, "
                                 f"last {cos[-1]:+.2f}, mean {np.mean(cos[1:]):+.2f}; "
                                 f"norm / student's {np.mean(ratio[1:]):.2f}")
            if "discriminator_accuracy" in vs[0]:
                d = np.mean([v["discriminator_accuracy"] for v in vs], 0)
                notes.append(f"D accuracy epoch 1 {d[0]:.2f}, last {d[-1]:.2f}")
                if "adversarial_loss" in vs[0]:
                    a = np.mean([v["adversarial_loss"] for v in vs], 0)
                    notes.append(f"adversarial loss last {a[-1]:.3f} (log 2 = 0.693)")
            lines.append(f"| {name} | {_mean_std(acc)} | {100 * (np.mean(acc) - base):+.2f} | "
                         f"{_mean_std([v['train_acc'] for v in vs])} | {'; '.join(notes)} |")
    return lines


def main(_):
    import keras

    unknown_variants = set(FLAGS.self_variants) - {v[0] for v in SELF_VARIANTS}
    if unknown_variants:
        raise app.UsageError(f"Unknown --self_variants {sorted(unknown_variants)}; choose "
                             f"from {[v[0] for v in SELF_VARIANTS]}.")
    unknown = set(FLAGS.rows) - set(ROWS)
    if unknown:
        raise app.UsageError(f"Unknown rows {sorted(unknown)}; choose from {ROWS}.")
    out_dir = pathlib.Path(FLAGS.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"schemes{FLAGS.tag}"
    data = {}
    if set(FLAGS.rows) - {"data_free"}:
        x, y = common.load_cifar10("train", FLAGS.train_size)
        data["train_images"] = (x, y)
        data["steps_per_epoch"] = -(-len(x) // FLAGS.batch_size)
        data["test"] = common.load_cifar10("test", FLAGS.test_size)
        data["teacher"] = keras.models.load_model(common.TEACHER_PATH)
    meta = {**{k: FLAGS[k].value for k in BUDGET}, "machine": common.machine()}
    path = out_dir / f"{stem}.json"
    runs = json.loads(path.read_text())["runs"] if FLAGS.resume and path.exists() else []
    done = {(r["row"], r["seed"]) for r in runs}
    for seed in [int(s) for s in FLAGS.seeds]:
        for row in FLAGS.rows:
            if (row, seed) in done:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            result = globals()[f"row_{row}"](data, seed)
            result.update(row=row, seed=seed, seconds=round(time.perf_counter() - wall, 1),
                          cpu_seconds=round(time.process_time() - cpu, 1))
            runs.append(result)
            print(row, seed, result, flush=True)
            common.write_results(stem, {"meta": meta, "runs": runs}, markdown(runs, meta),
                                 out_dir)


if __name__ == "__main__":
    app.run(main)
