"""The training and distillation flow of every recipe: `run(config, task)`, read top to bottom.

1. refuse what can be refused without data: the flag values, the task's view of them (zoo
   names), the knowledge mix (built now, so a typo fails before any training), and the output
   folder;
2. load and check the data (`recipes.pipeline`, `Task.load` / `check` / `prepare`);
3. load the teacher (`--teacher=path.keras`) or train one (`Task.build_teacher`);
4. train the student alone (the baseline, `--baseline`), and warn when the teacher scores
   below it;
5. distil the same student (same initial weights, data pipeline and epochs), from cached
   teacher outputs with `--cache_teacher`;
6. optionally run quantization-aware distillation (`--qat_epochs`);
7. export the `.tflite` file, evaluate it on the test split (`Task.tflite_outputs`), time it;
8. write report.md, metrics.json and the plots (`recipes.report`).

Every zoo model trained here gets a BatchNormalization momentum suited to its planned number of
steps (`--bn_momentum`). After training, its statistics are re-estimated over training
batches with the weights fixed (`--bn_recompute_batches`), before it is evaluated or exported.
A run too short for the moving averages is warned about. The warnings ("notes") are printed
when they arise and listed in the report.
"""
import pathlib
import time

from recipes import config as recipe_config
from recipes import pipeline
from recipes import report
from recipes.console import quiet_tf
from recipes.console import say

# Above this weight of the initial statistics, the moving averages do not describe the data.
STALE_LIMIT = 0.05
# Test samples whose outputs are kept for `Task.pictures`.
EXAMPLES = 16


def run(config, task):
    """Runs a whole recipe; returns the metrics dict written to `metrics.json`."""
    import keras

    begin = time.perf_counter()
    notes = []

    # 1. Everything that can be refused without data.
    recipe_config.check(config)
    task.check_config(config)
    task.knowledge(config)  # a bad --knowledge fails here, before the data is loaded
    out_dir = recipe_config.prepare_output_dir(config.output_dir)

    # 2. The data.
    keras.utils.set_random_seed(config.seed)
    splits = pipeline.load(config, task)
    (x_train, y_train), (x_test, y_test) = splits.train, splits.test
    steps_per_epoch = pipeline.steps(config, len(x_train), 1)
    # Built again now that the data fixes the steps that `{warmup_steps}` stands for.
    terms = task.adapt_knowledge(task.knowledge(config, steps_per_epoch), splits)
    xs_test = pipeline.student_view(task, x_test)
    xs_sample = pipeline.student_view(task, x_train[:500])  # input shape, int8 calibration
    bn_images = config.bn_recompute_batches * config.batch_size
    student_steps = pipeline.steps(config, len(x_train), config.epochs)
    examples = {"x": x_test[:EXAMPLES], "y": y_test[:EXAMPLES], "outputs": {}}
    rows, float_models = [], {}

    def add_row(name, model, outputs, **extra):
        examples["outputs"][name] = _head(outputs)
        rows.append(report.row(name, task.scores(y_test, outputs), **extra))
        if model is not None:
            float_models[name] = model
        return rows[-1]

    # 3. The teacher.
    teacher, teacher_info = _teacher(config, task, splits, out_dir, notes)
    teacher_row = add_row("teacher", teacher, task.predict(teacher, x_test),
                          params=teacher.count_params(), size_bytes=4 * teacher.count_params(),
                          source=teacher_info["source"])
    for name, outputs in task.reference_outputs(x_test):  # e.g. bicubic upsampling
        add_row(name, None, outputs)

    # 4. The student alone, and whether the teacher is worth distilling from.
    teacher_weaker = None
    if config.baseline:
        keras.utils.set_random_seed(config.seed)  # the same initial weights for every student
        alone = task.build_student(config, splits, xs_sample.shape[1:],
                                   _bn_momentum(config, student_steps))
        _warn_if_short(alone, "the student alone", student_steps, config, notes)
        xs_train = pipeline.student_view(task, x_train)
        seconds = _train(alone, config, task, xs_train, y_train, config.epochs,
                         "the student alone")
        _recompute_statistics(alone, "the student alone", xs_train[:bn_images], config)
        del xs_train
        alone_row = add_row("student alone", alone, task.predict(alone, xs_test),
                            params=alone.count_params(), size_bytes=4 * alone.count_params(),
                            seconds=seconds)
        teacher_weaker = is_worse(task, teacher_row, alone_row)
        if teacher_weaker:
            _note(notes, weak_teacher_note(task, teacher_row, alone_row))

    # 5. Distillation.
    keras.utils.set_random_seed(config.seed)
    student = task.build_student(config, splits, xs_sample.shape[1:],
                                 _bn_momentum(config, student_steps))
    _warn_if_short(student, "the distilled student", student_steps, config, notes)
    distiller, history, seconds = _distil(config, task, teacher, student, terms, splits)
    _recompute_statistics(student, "the distilled student",
                          pipeline.student_view(task, x_train[:bn_images]), config)
    add_row("distilled student", student, task.predict(student, xs_test),
            params=student.count_params(), size_bytes=4 * student.count_params(),
            seconds=seconds, knowledge=[t.name for t in distiller.knowledge],
            cached_teacher=config.cache_teacher)

    # 5b. Variants: the same distillation into a student with another input (reported only).
    for name, layer in task.variants(config):
        keras.utils.set_random_seed(config.seed)
        v_sample = pipeline.student_view(task, x_train[:500], layer=layer)
        v_student = task.build_student(config, splits, v_sample.shape[1:],
                                       _bn_momentum(config, student_steps))
        v_terms = task.adapt_knowledge(task.knowledge(config, steps_per_epoch),
                                       splits)  # terms are not shared
        _, _, seconds = _distil(config, task, teacher, v_student, v_terms, splits,
                                student_input=layer)
        _recompute_statistics(v_student, name, pipeline.student_view(
            task, x_train[:bn_images], layer=layer), config)
        add_row(name, v_student, task.predict(v_student, pipeline.student_view(
            task, x_test, layer=layer)), params=v_student.count_params(),
            size_bytes=4 * v_student.count_params(), seconds=seconds,
            knowledge=[t.name for t in v_terms])

    # 6. Quantization-aware distillation (its student folds BN with the statistics above).
    product, quantization = student, "int8"
    if config.qat_epochs > 0:
        qat, seconds = _quantization_aware(config, task, distiller, splits)
        product, quantization = qat.student, "qat"
        add_row("QAT student (Keras)", None, task.predict(product, xs_test),
                params=product.count_params(), seconds=seconds)

    # 7. The .tflite file, evaluated like the Keras models.
    artifacts = {}
    if config.export != "none":
        artifacts = _export_and_evaluate(config, task, product, quantization, out_dir,
                                         xs_sample, xs_test, add_row, splits)
    if config.latency:
        _time_float_models(rows, float_models, out_dir, task)

    # 8. The report.
    metrics = {
        "task": task.name, "headline": task.headline,
        "higher_is_better": task.higher_is_better, "data": splits.describe(),
        "num_classes": splits.num_classes, "teacher": teacher_info,
        "teacher_weaker_than_student": teacher_weaker,
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in vars(config).items()},
        "rows": rows, "artifacts": artifacts, "notes": notes,
        "distillation_history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "total_seconds": round(time.perf_counter() - begin, 1),
    }
    report.write(out_dir, metrics, task.pictures(out_dir, examples))
    return metrics


def main(make_task, **overrides):
    """The body of every recipe's absl `main`: flags -> Config -> run -> summary line."""
    quiet_tf()
    config = recipe_config.from_flags(**overrides)
    metrics = run(config, make_task())
    print(report.summary_line(metrics, config.output_dir))
    return metrics


# -- the teacher and the student's training -------------------------------------------------
def _teacher(config, task, splits, out_dir, notes):
    import keras

    if config.teacher:
        path = pathlib.Path(config.teacher)
        if not path.is_file():
            raise recipe_config.RecipeError(f"--teacher='{path}' does not exist.")
        teacher = keras.models.load_model(path)
        task.check_teacher(teacher, splits)
        return teacher, {"source": str(path)}
    x, y = splits.train
    steps = pipeline.steps(config, len(x), config.teacher_epochs)
    keras.utils.set_random_seed(config.seed + 1000)
    teacher = task.build_teacher(config, splits, _bn_momentum(config, steps))
    _warn_if_short(teacher, "the teacher", steps, config, notes)
    seconds = _train(teacher, config, task, x, y, config.teacher_epochs, "the teacher")
    # The teacher sees the data as it is (the student input applies to the student only).
    _recompute_statistics(teacher, "the teacher",
                          x[:config.bn_recompute_batches * config.batch_size], config)
    path = out_dir / "teacher.keras"
    teacher.save(path)
    return teacher, {"source": f"trained here ({config.teacher_arch} x{config.teacher_width}, "
                               f"{config.teacher_epochs} epochs, {seconds:.0f} s)",
                     "saved": str(path)}


def _optimizer(learning_rate, steps):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))
    return keras.optimizers.Adam(schedule)


def _train(model, config, task, x, y, epochs, what):
    """Plain supervised training of `model` (the teacher, or the student alone); seconds."""
    model.compile(optimizer=_optimizer(config.learning_rate,
                                       pipeline.steps(config, len(x), epochs)),
                  loss=task.loss(), metrics=task.metrics())
    say("Training %s (%d params) for %d epochs on %d images.", what, model.count_params(),
        epochs, len(x))
    start = time.perf_counter()
    model.fit(pipeline.training_batches(config, task, x, y), epochs=epochs,
              verbose=config.verbose)
    return time.perf_counter() - start


def _distil(config, task, teacher, student, terms, splits,
            student_input=pipeline.TASK_INPUT):
    import tfkd

    x, y = splits.train
    if student_input is pipeline.TASK_INPUT:
        student_input = task.student_input()
    distiller = tfkd.Distiller(student, teacher, knowledge=terms,
                               student_loss_weight=config.student_loss_weight,
                               student_input=student_input)
    distiller.compile(optimizer=_optimizer(config.learning_rate,
                                           pipeline.steps(config, len(x), config.epochs)),
                      loss=task.loss(), metrics=task.metrics())
    batches = pipeline.distillation_batches(config, task, distiller, x, y)
    say("Distilling into %s with %s%s.", student.name, [t.name for t in distiller.knowledge],
        " (cached teacher outputs)" if config.cache_teacher else "")
    start = time.perf_counter()
    history = distiller.fit(batches, epochs=config.epochs, verbose=config.verbose)
    return distiller, history.history, time.perf_counter() - start


def _quantization_aware(config, task, distiller, splits):
    """Quantization-aware distillation: the float teacher keeps guiding the int8 student."""
    x, y = splits.train
    # The distiller maps the calibration images through the student input itself.
    qat = distiller.quantization_aware(calibration_data=x[:256].astype("float32"),
                                       input_range=task.qat_input_range)
    qat.compile(optimizer=_optimizer(config.learning_rate / 10,
                                     pipeline.steps(config, len(x), config.qat_epochs)),
                loss=task.loss(), metrics=task.metrics())
    say("Quantization-aware distillation for %d epochs.", config.qat_epochs)
    start = time.perf_counter()
    qat.fit(pipeline.training_batches(config, task, x, y, seed_offset=1),
            epochs=config.qat_epochs, verbose=config.verbose)
    return qat, time.perf_counter() - start


# -- BatchNormalization on short runs -------------------------------------------------------
def _bn_momentum(config, steps):
    from tfkd import batch_norm

    return config.bn_momentum or batch_norm.momentum_for_steps(steps)


def _warn_if_short(model, what, steps, config, notes):
    """Notes a run too short for the model's BatchNorm moving averages, before it trains."""
    from tfkd import batch_norm

    stale = batch_norm.stale_fraction(model, steps)
    if stale <= STALE_LIMIT:
        return
    momentum = max(layer.momentum for layer in batch_norm.batch_norm_layers(model))
    text = (f"BatchNorm: {what} trains {steps} steps, after which its moving statistics "
            f"(momentum {momentum:.3f}) still weigh {stale:.0%} of their initial values. ")
    if config.bn_recompute_batches:
        text += (f"They are re-estimated over up to {config.bn_recompute_batches} training "
                 "batches before evaluation and export; more epochs or images give better "
                 "weights and statistics.")
    else:
        text += ("Evaluation and the export would use them as they are: set "
                 "--bn_recompute_batches=32 to re-estimate them with the weights fixed, or "
                 f"--bn_momentum={batch_norm.momentum_for_steps(steps):.3f}, or train longer.")
    _note(notes, text)


def _recompute_statistics(model, what, x, config):
    from tfkd import batch_norm

    if not config.bn_recompute_batches or len(x) == 0:
        return
    seen = batch_norm.recompute_statistics(model, x, max_batches=config.bn_recompute_batches,
                                           batch_size=config.batch_size)
    if seen:
        say("Re-estimated the BatchNorm statistics of %s over %d training images.", what, seen)


# -- weak teachers ---------------------------------------------------------------------------
def is_worse(task, row, other):
    """Whether `row` scores worse than `other` on the task's headline (False if either is NaN
    or missing)."""
    a, b = row.get(task.headline), other.get(task.headline)
    if a is None or b is None or a != a or b != b:
        return False
    return a < b if task.higher_is_better else a > b


def weak_teacher_note(task, teacher_row, alone_row):
    return (f"The teacher scores below the student trained alone ({task.headline} "
            f"{teacher_row[task.headline]:.3f} vs {alone_row[task.headline]:.3f}): distilling "
            "from it is expected to hurt the student. Use a stronger teacher (another "
            "--teacher, or one trained here for more --teacher_epochs or with a larger "
            "--teacher_width).")


def _note(notes, text):
    say("WARNING: %s", text)
    notes.append(text)


# -- export and evaluation ------------------------------------------------------------------
def predict(model, x, batch_size=256):
    """The model's outputs on `x` as numpy (a list / dict of arrays for several outputs)."""
    import keras
    import numpy as np

    outputs = model.predict(np.asarray(x, "float32"), batch_size=batch_size, verbose=0)
    return keras.tree.map_structure(np.asarray, outputs)


def _head(outputs):
    import keras

    return keras.tree.map_structure(lambda a: a[:EXAMPLES], outputs)


def _convert(model, path, quantization, calibration=None, **client):
    """A `.tflite` file of `model`: float32, or int8 / QAT calibrated on `calibration`;
    `client`: `tfl.convert`'s target, labels, output_meaning and metadata."""
    import tfkd.tflite as tfl

    if quantization == "float32":
        return tfl.convert(model, str(path), quantization="float32", **client)
    return tfl.convert(model, str(path), quantization=quantization,
                       representative_data=calibration, num_calibration_steps=200, **client)


def _latency_ms(path, task):
    import tfkd.tflite as tfl

    result = tfl.benchmark(str(path), num_threads=(1,), warmup=5, runs=30,
                           input_shape=task.latency_input_shape)
    return float(result["latency_ms"][1]["p50"])


def _export_and_evaluate(config, task, product, quantization, out_dir, xs_sample, xs_test,
                         add_row, splits):
    import tfkd

    quantization = quantization if config.export == "int8" else "float32"
    path = out_dir / f"student_{config.export}.tflite"
    export, meaning = task.deployable(product, config.target)
    labels = list(splits.class_names) if splits.class_names else None
    converted = _convert(export, path, quantization, xs_sample, target=config.target,
                         labels=labels, output_meaning=meaning, metadata={
                             "name": f"{task.name} student ({config.student})",
                             "description": f"tfkd {task.name} student distilled with "
                                            f"{config.knowledge or 'no knowledge term'}; "
                                            f"{quantization} export for {config.target}.",
                             "version": tfkd.__version__, "author": "tfkd recipe"})
    latency = _latency_ms(path, task) if config.latency or config.export == "int8" else None
    add_row(f"{config.export} student (.tflite)", None, task.tflite_outputs(path, xs_test),
            params=product.count_params(), size_bytes=converted.size_bytes, latency_ms=latency,
            fully_int8=converted.is_fully_int8 if config.export == "int8" else None)
    artifacts = {"tflite": str(path), "tflite_ops": converted.op_counts,
                 "target": config.target}
    if config.target == "mediapipe":
        artifacts["mediapipe"] = _mediapipe_check(path, xs_test)
    try:
        import tfkd.tflite as tfl

        edgetpu = tfl.check_edgetpu(str(path))
        artifacts["edgetpu_compatible"] = bool(edgetpu.compatible)
        if not edgetpu.compatible:
            first = edgetpu.first_unmapped
            artifacts["edgetpu_first_unmapped"] = f"#{first.index} {first.op}: {first.reason}"
        # Ops the offline check counts as mapped but cannot be sure of (resizes, ...).
        artifacts["edgetpu_uncertain"] = [f"#{op.index} {op.op}: {' / '.join(op.warnings)}"
                                          for op in edgetpu.uncertain]
    except Exception as e:  # a checker problem must not lose the report
        artifacts["edgetpu_compatible"] = f"not checked ({type(e).__name__})"
    return artifacts


def _mediapipe_check(path, images):
    """The exported file run in MediaPipe Tasks (the client of an Android app) and compared
    with LiteRT on test images; a report entry, never a reason to lose the run."""
    import tfkd.tflite as tfl

    try:
        result = tfl.mediapipe_agreement(str(path), images[:EXAMPLES * 4])
    except tfl.MediaPipeMissingError:
        return "not checked (pip install 'tfkd[mediapipe]')"
    except Exception as e:  # a client problem must not lose the report: it is reported
        say("WARNING: MediaPipe could not run %s: %s", path, e)
        return f"failed: {type(e).__name__}: {e}"
    result.pop("labels", None)
    return result


def _time_float_models(rows, float_models, out_dir, task):
    """Latency and size of the float Keras models, converted to float32 `.tflite` files."""
    for row in rows:
        model = float_models.get(row["model"])
        if model is None:
            continue
        path = out_dir / f"{row['model'].replace(' ', '_')}_float32.tflite"
        _convert(task.export_model(model), path, "float32")
        row["latency_ms"] = _latency_ms(path, task)
        row["size_kb"] = round(path.stat().st_size / 1024, 1)
        path.unlink()
