"""What every recipe shares: flags, and the steps data -> teacher -> distil -> QAT -> export -> report.

A recipe is a `Task` (loss, metrics, what the student sees, default knowledge) plus flag
defaults; `run(config, task)` does the rest:

1. check the output folder can be written (before any training);
2. load the data (`tfkd.data`: `.npz`, image folder or tfds name) and check the labels;
3. load the teacher (`--teacher=path.keras`) or train one from the zoo (`--teacher_arch`);
4. train the student alone (the baseline, `--baseline`), then distil the same student
   (same initial weights, data pipeline and epochs) with the `--knowledge` mix, from cached
   teacher outputs when `--cache_teacher` and the pipeline is deterministic;
5. optionally run quantization-aware distillation (`--qat_epochs`);
6. export an int8 `.tflite` (`tfkd.tflite`), evaluate it on the test split, and time it;
7. write `report.md`, `metrics.json` and `plot.png` (accuracy vs size vs latency for
   teacher, student alone, distilled student and int8 student) into `--output_dir`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

from absl import flags
from absl import logging


def say(message, *args):
    """Progress lines of the recipe (TensorFlow's own INFO logs are silenced by `quiet_tf`)."""
    print("[tfkd] " + (message % args if args else message), flush=True)


def quiet_tf():
    logging.set_verbosity(logging.ERROR)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KNOWLEDGE_NAMES = ("soft_targets", "dkd", "hint", "attention", "relational", "similarity",
                   "binary_soft_targets")
EXPORTS = ("int8", "float32", "none")


# -- configuration -------------------------------------------------------------------------
@dataclasses.dataclass
class Config:
    """Every knob of a recipe run; the flags of the same names fill it (`from_flags`)."""

    data: str = ""
    download: bool = False
    data_dir: str | None = None
    image_size: int = 0
    max_train: int = 0
    max_test: int = 0
    teacher: str = ""
    teacher_arch: str = "resnet_tiny"
    teacher_width: float = 2.0
    teacher_epochs: int = 10
    student: str = "mobile_cnn"
    student_width: float = 1.0
    knowledge: tuple = ("soft_targets",)
    temperature: float = 4.0
    kd_weight: float = 1.0
    feature_pairs: tuple = ("stage3:stage3",)
    feature_weight: float = 1.0
    student_loss_weight: float = 1.0
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    augment: bool = False
    cache_teacher: bool = False
    baseline: bool = True
    qat_epochs: int = 0
    export: str = "int8"
    latency: bool = True
    seed: int = 0
    output_dir: str = "runs/recipe"
    verbose: int = 2


_HELP = {
    "data": "Data: an .npz file (x_train/y_train/x_test/y_test or MedMNIST's train_images/...), "
            "an image folder (root/<class>/*.jpg or root/{train,test}/<class>/...), or a tfds "
            "name (needs --download on first use).",
    "download": "Let tfds download the data set (needs internet).",
    "data_dir": "tfds data folder (default: tfds' ~/tensorflow_datasets).",
    "image_size": "Resize images of folders / tfds to this square size (0: the recipe's default).",
    "max_train": "Use only the first N training images (0: all).",
    "max_test": "Use only the first N test images (0: all).",
    "teacher": "Path of a trained teacher (.keras). Empty: train one from the zoo "
               "(--teacher_arch, --teacher_width, --teacher_epochs) and save it in the report.",
    "teacher_arch": "Zoo architecture of a teacher trained here (see --student).",
    "teacher_width": "Width multiplier of a teacher trained here.",
    "teacher_epochs": "Epochs of a teacher trained here.",
    "student": "Student from tfkd.students: mobile_cnn, resnet_tiny or mobilenet_tiny.",
    "student_width": "Width multiplier of the student (channels x width).",
    "knowledge": "Comma-separated knowledge mix: " + ", ".join(KNOWLEDGE_NAMES) + ". Feature "
                 "terms (hint, attention, similarity) use --feature_pairs.",
    "temperature": "Temperature of soft_targets, dkd and binary_soft_targets.",
    "kd_weight": "Weight of the response-based terms (soft_targets, dkd, binary_soft_targets).",
    "feature_pairs": "student_layer:teacher_layer pairs of the feature terms, comma-separated.",
    "feature_weight": "Weight of the feature- and relation-based terms.",
    "student_loss_weight": "Weight of the student's task loss on the labels during distillation.",
    "epochs": "Epochs of the student (alone and distilled: the same budget).",
    "batch_size": "Batch size.",
    "learning_rate": "Peak learning rate (Adam, cosine decay).",
    "augment": "Random flips and shifts in the input pipeline (teacher and student see the same "
               "augmented batch). Not compatible with --cache_teacher.",
    "cache_teacher": "Compute the teacher's outputs once and reuse them every epoch "
                     "(deterministic pipelines only: refused with --augment).",
    "baseline": "Also train the student alone, for the comparison in the report.",
    "qat_epochs": "Epochs of quantization-aware distillation after distillation (0: post-"
                  "training int8 quantization only).",
    "export": "Export the student as: " + ", ".join(EXPORTS) + ".",
    "latency": "Convert the float models too and time all of them with the TFLite runtime.",
    "seed": "Random seed (weights, shuffling, augmentation).",
    "output_dir": "Report folder (created; must be writable).",
    "verbose": "Keras verbosity of fit (0 silent, 1 progress bar, 2 one line per epoch).",
}


def define_flags(**defaults):
    """Defines every `Config` field as an absl flag (once per process), with recipe defaults."""
    for field in dataclasses.fields(Config):
        name = field.name
        default = defaults.get(name, field.default)
        if name in flags.FLAGS:
            flags.FLAGS.set_default(name, list(default) if isinstance(default, tuple) else default)
            continue
        help_text = _HELP[name]
        if field.type in ("bool",):
            flags.DEFINE_bool(name, default, help_text)
        elif field.type == "int":
            flags.DEFINE_integer(name, default, help_text)
        elif field.type == "float":
            flags.DEFINE_float(name, default, help_text)
        elif field.type == "tuple":
            flags.DEFINE_list(name, list(default), help_text)
        elif name == "export":
            flags.DEFINE_enum(name, default, EXPORTS, help_text)
        else:
            flags.DEFINE_string(name, default, help_text)


def from_flags(**overrides):
    """A Config from the parsed flags."""
    values = {f.name: getattr(flags.FLAGS, f.name) for f in dataclasses.fields(Config)}
    for key in ("knowledge", "feature_pairs"):
        values[key] = tuple(v.strip() for v in values[key] if v.strip())
    values.update(overrides)
    return Config(**values)


# -- tasks -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Task:
    """What differs between recipes.

    loss / compile_metrics: factories of the Keras task loss and metrics.
    scores: (y_true, outputs as numpy logits) -> dict of metrics; computed the same way for
        the Keras models and the int8 `.tflite`, so the report compares like with like.
    headline: key of `scores` plotted and summarised.
    student_input: a Keras layer mapping the data to what the student sees (e.g. a
        downsampling for low-resolution students), or None.
    sample_weights: (y) -> per-sample weights (class weights for imbalanced data), or None.
    make_student: (config, input_shape, num_classes) -> keras.Model; default the zoo.
    """

    name: str
    loss: object
    compile_metrics: object
    scores: object
    headline: str = "accuracy"
    student_input: object = None
    sample_weights: object = None
    make_student: object = None
    extra_knowledge: object = None


def classification_scores(y_true, logits):
    import numpy as np

    y_true = np.asarray(y_true).reshape(-1)
    return {"accuracy": float(np.mean(np.argmax(logits, -1) == y_true))}


def classification_task(**kwargs):
    import keras

    return Task(
        name="classification",
        loss=lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        compile_metrics=lambda: ["accuracy"],
        scores=classification_scores,
        **kwargs,
    )


# -- steps ----------------------------------------------------------------------------------
class RecipeError(ValueError):
    """A recipe input that cannot be used (the message says what to change)."""


def prepare_output_dir(path):
    """Creates the report folder and checks it is writable, before any training."""
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RecipeError(
            f"Cannot write the report folder '{path}' ({e.strerror or e}). Pick another "
            "--output_dir.") from e
    return path


def load_data(config, default_image_size=32):
    from tfkd import data

    size = config.image_size or default_image_size
    splits = data.load(config.data, image_size=(size, size), download=config.download,
                       data_dir=config.data_dir)
    return splits.subset(config.max_train or None, config.max_test or None)


def apply_input(layer, x, batch_size=256):
    """Runs a student-input layer over numpy images in batches; returns numpy float32."""
    import numpy as np

    if layer is None:
        return np.asarray(x, "float32")
    out = [np.asarray(layer(np.asarray(x[i:i + batch_size], "float32")))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype("float32")


def _augmentation(seed):
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=seed),
    ], name="augment")


def _optimizer(config, steps):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, max(1, steps))
    return keras.optimizers.Adam(schedule)


def _dataset(config, x, y, weights, augment, seed_offset=0):
    from tfkd import data

    return data.make_dataset(x, y, config.batch_size, sample_weight=weights,
                             augment=_augmentation(config.seed + seed_offset) if augment else None,
                             shuffle=True, seed=config.seed + seed_offset)


def _weights(task, y):
    return None if task.sample_weights is None else task.sample_weights(y)


def train_model(model, config, task, x, y, epochs, what):
    """Plain supervised training of `model` (the teacher, or the student alone)."""
    steps = epochs * -(-len(x) // config.batch_size)
    model.compile(optimizer=_optimizer(config, steps), loss=task.loss(),
                  metrics=task.compile_metrics())
    say("Training %s (%d params) for %d epochs on %d images.", what,
                 model.count_params(), epochs, len(x))
    start = time.perf_counter()
    history = model.fit(_dataset(config, x, y, _weights(task, y), config.augment),
                        epochs=epochs, verbose=config.verbose)
    return history.history, time.perf_counter() - start


def load_or_train_teacher(config, task, splits, out_dir):
    import keras

    from tfkd import data
    from tfkd import students

    if config.teacher:
        path = pathlib.Path(config.teacher)
        if not path.is_file():
            raise RecipeError(f"--teacher='{path}' does not exist.")
        teacher = keras.models.load_model(path)
        data.check_teacher(teacher, splits.num_classes, splits.image_shape)
        return teacher, {"source": str(path)}
    keras.utils.set_random_seed(config.seed + 1000)
    teacher = students.build(config.teacher_arch, splits.image_shape, splits.num_classes,
                             width=config.teacher_width)
    teacher._name = "teacher"
    x, y = splits.train
    history, seconds = train_model(teacher, config, task, x, y, config.teacher_epochs, "teacher")
    path = out_dir / "teacher.keras"
    teacher.save(path)
    return teacher, {"source": f"trained here ({config.teacher_arch} x{config.teacher_width}, "
                               f"{config.teacher_epochs} epochs, {seconds:.0f} s)",
                     "saved": str(path)}


def make_knowledge(config, task):
    """Knowledge terms from `--knowledge` (names) and their flags."""
    import tfkd
    from tfkd.knowledge.multilabel import BinarySoftTargets

    pairs = []
    for spec in config.feature_pairs:
        if spec.count(":") != 1:
            raise RecipeError(f"--feature_pairs entry {spec!r} must be student_layer:teacher_layer.")
        pairs.append(tuple(spec.split(":")))
    terms = []
    for name in config.knowledge:
        if name == "soft_targets":
            terms.append(tfkd.knowledge.SoftTargets(config.temperature, weight=config.kd_weight))
        elif name == "dkd":
            terms.append(tfkd.knowledge.DecoupledKD(temperature=config.temperature,
                                                    weight=config.kd_weight))
        elif name == "binary_soft_targets":
            terms.append(BinarySoftTargets(config.temperature, weight=config.kd_weight))
        elif name == "hint":
            terms += [tfkd.knowledge.Hint(s, t, weight=config.feature_weight) for s, t in pairs]
        elif name == "attention":
            terms.append(tfkd.knowledge.AttentionTransfer(pairs, weight=config.feature_weight))
        elif name == "similarity":
            terms += [tfkd.knowledge.SimilarityPreserving(s, t, weight=config.feature_weight)
                      for s, t in pairs]
        elif name == "relational":
            terms.append(tfkd.knowledge.RelationalKD(weight=config.feature_weight))
        else:
            raise RecipeError(f"Unknown --knowledge term {name!r}; known: "
                              f"{', '.join(KNOWLEDGE_NAMES)}.")
    if task.extra_knowledge is not None:
        terms += list(task.extra_knowledge(config))
    if not terms:
        raise RecipeError("--knowledge is empty: name at least one term, e.g. soft_targets.")
    return terms


def build_student(config, task, splits, student_shape):
    import keras

    from tfkd import students

    keras.utils.set_random_seed(config.seed)  # the same initial weights for every student
    if task.make_student is not None:
        return task.make_student(config, student_shape, splits.num_classes)
    return students.build(config.student, student_shape, splits.num_classes,
                          width=config.student_width)


def distil(config, task, teacher, student, splits):
    import tfkd
    from tfkd import data

    distiller = tfkd.Distiller(student, teacher, knowledge=make_knowledge(config, task),
                               student_loss_weight=config.student_loss_weight,
                               student_input=task.student_input)
    x, y = splits.train
    steps = config.epochs * -(-len(x) // config.batch_size)
    distiller.compile(optimizer=_optimizer(config, steps), loss=task.loss(),
                      metrics=task.compile_metrics())
    weights = _weights(task, y)
    if config.cache_teacher:
        ds = data.cache_teacher(distiller, x, y, batch_size=config.batch_size,
                                sample_weight=weights, seed=config.seed,
                                augment=_augmentation(config.seed) if config.augment else None)
    else:
        ds = _dataset(config, x, y, weights, config.augment)
    say("Distilling into %s with %s%s.", student.name,
                 [t.name for t in distiller.knowledge],
                 " (cached teacher outputs)" if config.cache_teacher else "")
    start = time.perf_counter()
    history = distiller.fit(ds, epochs=config.epochs, verbose=config.verbose)
    return distiller, history.history, time.perf_counter() - start


def quantization_aware(config, task, distiller, x_student, splits):
    """Quantization-aware distillation: the float teacher keeps guiding the int8 student."""
    x, y = splits.train
    qat = distiller.quantize(calibration_data=x[:256].astype("float32"))
    qat.compile(optimizer=_optimizer(dataclasses.replace(config, learning_rate=
                                                         config.learning_rate / 10),
                                     config.qat_epochs * -(-len(x) // config.batch_size)),
                loss=task.loss(), metrics=task.compile_metrics())
    start = time.perf_counter()
    qat.fit(_dataset(config, x, y, _weights(task, y), config.augment, seed_offset=1),
            epochs=config.qat_epochs, verbose=config.verbose)
    return qat, time.perf_counter() - start


def predict(model, x, batch_size=256):
    import numpy as np

    return np.asarray(model.predict(np.asarray(x, "float32"), batch_size=batch_size, verbose=0))


def export(config, model, path, x_calibration, quantization):
    import tfkd.tflite as tfl

    if quantization == "float32":
        return tfl.convert(model, str(path), quantization="float32")
    return tfl.convert(model, str(path), quantization=quantization,
                       representative_data=x_calibration, input_type="uint8",
                       output_type="int8", num_calibration_steps=200)


def tflite_outputs(path, x):
    from tfkd.tflite.evaluate import run_on_data

    _, outputs, _ = run_on_data(str(path), x)
    return outputs.reshape(len(x), -1)


def tflite_latency_ms(path):
    import tfkd.tflite as tfl

    result = tfl.benchmark(str(path), num_threads=(1,), warmup=5, runs=30)
    return float(result["latency_ms"][1]["p50"])


def _row(name, scores, params=None, size_bytes=None, latency_ms=None, seconds=None, **extra):
    row = {"model": name, **scores, "params": params, "size_kb": None if size_bytes is None
           else round(size_bytes / 1024, 1), "latency_ms": latency_ms, "train_seconds":
           None if seconds is None else round(seconds, 1)}
    row.update(extra)
    return row


def run(config, task, splits=None, default_image_size=32):
    """Runs a whole recipe; returns the metrics dict written to `metrics.json`."""
    import keras
    import numpy as np

    from tfkd import data

    if config.export not in EXPORTS:
        raise RecipeError(f"--export={config.export!r}: use one of {EXPORTS}.")
    if config.cache_teacher and config.augment:
        raise data.RandomPipelineError(
            "--cache_teacher with --augment: caching would freeze one random view of each "
            "image for the teacher. Drop --cache_teacher (teacher and student then see the "
            "same augmented batch every step) or drop --augment.")
    from tfkd import students

    zoo = students.names()
    if task.make_student is None and config.student not in zoo:
        raise RecipeError(f"--student={config.student!r} is not in the zoo: {', '.join(zoo)}.")
    if not config.teacher and config.teacher_arch not in zoo:
        raise RecipeError(f"--teacher_arch={config.teacher_arch!r} is not in the zoo: "
                          f"{', '.join(zoo)}.")
    make_knowledge(config, task)  # a typo in --knowledge fails now, not after training
    out_dir = prepare_output_dir(config.output_dir)
    begin = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    if splits is None:
        splits = load_data(config, default_image_size)
    say("%s", splits.describe())
    for name, split in (("train", splits.train), ("test", splits.test)):
        data.check_labels(split[1], splits.num_classes, f"{name} labels")

    teacher, teacher_info = load_or_train_teacher(config, task, splits, out_dir)
    x_test, y_test = splits.test
    xs_test = apply_input(task.student_input, x_test)
    xs_train_sample = apply_input(task.student_input, splits.train[0][:500])
    rows, latency_files = [], {}

    t_scores = task.scores(y_test, predict(teacher, x_test))
    rows.append(_row("teacher", t_scores, teacher.count_params(), 4 * teacher.count_params(),
                     source=teacher_info["source"]))
    latency_files["teacher"] = teacher

    alone = None
    if config.baseline:
        alone = build_student(config, task, splits, xs_train_sample.shape[1:])
        xs_train = apply_input(task.student_input, splits.train[0])
        _, seconds = train_model(alone, config, task, xs_train, splits.train[1], config.epochs,
                                 "the student alone")
        del xs_train
        rows.append(_row("student alone", task.scores(y_test, predict(alone, xs_test)),
                         alone.count_params(), 4 * alone.count_params(), seconds=seconds))
        latency_files["student alone"] = alone

    student = build_student(config, task, splits, xs_train_sample.shape[1:])
    distiller, history, seconds = distil(config, task, teacher, student, splits)
    rows.append(_row("distilled student", task.scores(y_test, predict(student, xs_test)),
                     student.count_params(), 4 * student.count_params(), seconds=seconds,
                     knowledge=list(config.knowledge), cached_teacher=config.cache_teacher))
    latency_files["distilled student"] = student
    product, quantization = student, "int8"
    if config.qat_epochs > 0:
        qat, qat_seconds = quantization_aware(config, task, distiller, xs_train_sample, splits)
        product, quantization = qat.student, "qat"
        rows.append(_row("QAT student (Keras)", task.scores(y_test, predict(product, xs_test)),
                         product.count_params(), seconds=qat_seconds))

    artifacts = {}
    if config.export != "none":
        quantization = quantization if config.export == "int8" else "float32"
        path = out_dir / f"student_{config.export}.tflite"
        report = export(config, product, path, xs_train_sample, quantization)
        outputs = tflite_outputs(path, xs_test)
        latency = tflite_latency_ms(path) if config.latency or config.export == "int8" else None
        rows.append(_row(f"{config.export} student (.tflite)", task.scores(y_test, outputs),
                         product.count_params(), report.size_bytes, latency,
                         fully_int8=report.is_fully_int8 if config.export == "int8" else None))
        artifacts["tflite"] = str(path)
        artifacts["tflite_ops"] = report.op_counts
        try:
            import tfkd.tflite as tfl

            edgetpu = tfl.check_edgetpu(str(path))
            artifacts["edgetpu_compatible"] = bool(edgetpu.compatible)
        except Exception as e:  # a checker problem must not lose the report
            artifacts["edgetpu_compatible"] = f"not checked ({type(e).__name__})"
    if config.latency:
        for row in rows:
            model = latency_files.get(row["model"])
            if model is not None:
                path = out_dir / f"{row['model'].replace(' ', '_')}_float32.tflite"
                export(config, model, path, None, "float32")
                row["latency_ms"] = tflite_latency_ms(path)
                row["size_kb"] = round(path.stat().st_size / 1024, 1)
                path.unlink()

    metrics = {
        "task": task.name, "headline": task.headline, "data": splits.describe(),
        "num_classes": splits.num_classes, "teacher": teacher_info,
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in dataclasses.asdict(config).items()},
        "rows": rows, "artifacts": artifacts,
        "distillation_history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "total_seconds": round(time.perf_counter() - begin, 1),
    }
    write_report(out_dir, metrics)
    return metrics


# -- report ----------------------------------------------------------------------------------
def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if value <= 1.0 else f"{value:.1f}"
    return str(value)


def write_report(out_dir, metrics):
    """Writes metrics.json, plot.png and report.md into `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    plot(metrics, out_dir / "plot.png")
    headline = metrics["headline"]
    score_keys = [k for k in metrics["rows"][0] if k not in
                  ("model", "params", "size_kb", "latency_ms", "train_seconds", "source",
                   "knowledge", "cached_teacher", "fully_int8")]
    lines = [f"# {metrics['task']} recipe report", "",
             f"- data: {metrics['data']}",
             f"- teacher: {metrics['teacher']['source']}",
             f"- knowledge: {', '.join(metrics['config']['knowledge'])}; student "
             f"{metrics['config']['student']} x{metrics['config']['student_width']}, "
             f"{metrics['config']['epochs']} epochs",
             f"- total time: {metrics['total_seconds']} s", "",
             "| model | " + " | ".join(score_keys) + " | params | size (KB) | latency (ms, "
             "TFLite, 1 thread) | train (s) |",
             "|---|" + "---|" * (len(score_keys) + 4)]
    for row in metrics["rows"]:
        lines.append(f"| {row['model']} | " + " | ".join(_fmt(row.get(k)) for k in score_keys)
                     + f" | {_fmt(row['params'])} | {_fmt(row['size_kb'])} | "
                       f"{_fmt(row['latency_ms'])} | {_fmt(row['train_seconds'])} |")
    art = metrics["artifacts"]
    if art.get("tflite"):
        lines += ["", f"Exported: `{art['tflite']}` (ops: "
                  + ", ".join(f"{k} x{v}" for k, v in sorted(art['tflite_ops'].items()))
                  + f"; Edge TPU check: {art.get('edgetpu_compatible')})."]
    lines += ["", f"![{headline} vs size vs latency](plot.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))


def plot(metrics, path):
    """Accuracy (headline metric) against size, marker area ~ latency, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    headline = metrics["headline"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    rows = [r for r in metrics["rows"] if r.get("size_kb") and r.get(headline) is not None]
    lat = [r["latency_ms"] for r in rows if r.get("latency_ms")]
    scale = 600.0 / max(lat) if lat else 1.0
    for row in rows:
        size = 40 + scale * row["latency_ms"] if row.get("latency_ms") else 60
        ax.scatter(row["size_kb"], row[headline], s=size, alpha=0.7)
        label = row["model"] + (f"\n{row['latency_ms']:.2f} ms" if row.get("latency_ms") else "")
        ax.annotate(label, (row["size_kb"], row[headline]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("model size (KB, log scale)")
    ax.set_ylabel(headline)
    ax.set_title(f"{metrics['task']}: {headline} vs size (marker area ~ TFLite latency)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_line(metrics, out_dir):
    headline = metrics["headline"]
    parts = [f"{r['model']} {r[headline]:.3f}" for r in metrics["rows"]
             if r.get(headline) is not None]
    return (f"{metrics['task']}: {headline}: " + ", ".join(parts)
            + f" | report: {pathlib.Path(out_dir).resolve() / 'report.md'}")
