"""The data side of a recipe run: load and check the splits, the student's view of the images,
and the training batches (with or without cached teacher outputs).

Everything task-specific comes from the `Task` (`recipes.task`). This module only puts the
pieces in order and does the batching that every task shares.
"""
import numpy as np

from recipes.console import say


def load(config, task):
    """The task's data, checked, after `task.prepare` has seen it."""
    splits = task.load(config)
    say("%s", splits.describe())
    task.check(splits)
    task.prepare(splits)
    return splits


def steps(config, num_samples, epochs):
    """Optimizer steps of `epochs` epochs over `num_samples` samples."""
    return epochs * -(-num_samples // config.batch_size)


# The default of `layer=`: the task's own student input (None is a valid layer: none).
TASK_INPUT = object()


def student_view(task, x, batch_size=256, layer=TASK_INPUT):
    """Images `x` (numpy) as the student sees them (through `task.student_input()`, or through
    `layer` for a variant's student), float32."""
    if layer is TASK_INPUT:
        layer = task.student_input()
    if getattr(x, "dtype", None) == object:  # images of different sizes (SR test sets)
        if layer is None:
            return x
        return image_list([np.asarray(layer(np.asarray(i, "float32")[None]))[0] for i in x])
    if layer is None or len(x) == 0:
        return np.asarray(x, "float32")
    out = [np.asarray(layer(np.asarray(x[i:i + batch_size], "float32")))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype("float32")


def image_list(images):
    """Images of different sizes as a 1-D object array (slices, `len` and indexing like the
    stacked arrays of the other tasks; numpy would try to stack a list of equal shapes)."""
    out = np.empty(len(images), dtype=object)
    for i, image in enumerate(images):
        out[i] = image
    return out


def training_batches(config, task, x, y, seed_offset=0):
    """The shuffled training pipeline of (x, y[, sample weights]); augmented with --augment."""
    return task.dataset(x, y, task.sample_weights(y), config.batch_size, config.augment,
                        config.seed + seed_offset)


def distillation_batches(config, task, distiller, x, y):
    """The distiller's training batches: with --cache_teacher, the teacher runs once here and
    each step runs only the student (the pipeline is deterministic, `config.check` made sure)."""
    from tfkd import data

    if not config.cache_teacher:
        return training_batches(config, task, x, y)
    return data.cache_teacher(distiller, x, y, batch_size=config.batch_size,
                              sample_weight=task.sample_weights(y), seed=config.seed)
