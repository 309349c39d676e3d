"""Pieces of a training step shared by `tfkd.Distiller` and the schemes of `tfkd.schemes`.

The rules they encode: a per-replica loss is divided by `num_replicas_in_sync` before the
gradient (gradients are summed over replicas, as keras.losses.Loss assumes); the teaching
side carries no gradient; every knowledge term is weighted and summed the same way.
"""
import keras
import tensorflow as tf
from keras import ops

from tfkd.knowledge.base import View


def scale_for_replicas(value):
    """A per-replica loss divided by the number of replicas (as keras.losses.Loss does)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value / replicas if replicas > 1 else value


def stop_gradient_view(view):
    """A View whose outputs and features carry no gradient (the teaching side)."""
    if view is None:
        return None
    return View(
        keras.tree.map_structure(tf.stop_gradient, view.outputs),
        {k: tf.stop_gradient(v) for k, v in view.features.items()},
    )


def unique_names(terms):
    """Renames repeated term names `hint`, `hint_2`, ...: metric names must be unique."""
    seen = {}
    for term in terms:
        count = seen.get(term.name, 0)
        seen[term.name] = count + 1
        if count:
            term.name = f"{term.name}_{count + 1}"
            seen[term.name] = 1


def unique_variables(variables):
    """Variables in order, each once (tap models and sub-models share them)."""
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def knowledge_losses(terms, teacher_view, student_view, y=None, sample_weight=None,
                     check=None):
    """Returns (sum of weight * loss scaled for the replicas, [unscaled loss per term]).

    `check(value, term_name)` may wrap each value (e.g. a NaN guard).
    """
    total = ops.zeros((), "float32")
    values = []
    for term in terms:
        teacher = teacher_view if term.requires_teacher else None
        value = term.loss(teacher, student_view, y_true=y, sample_weight=sample_weight)
        if check is not None:
            value = check(value, term.name)
        values.append(value)
        total = total + term.weight * scale_for_replicas(value)
    return total, values


def regularization_loss(student, terms=()):
    """The student's and the terms' own losses (kernel regularisers...), replica-scaled.

    The teacher's are left out on purpose: they are constants of a frozen model.
    """
    losses = [ops.cast(l, "float32") for l in student.losses]
    for term in terms:
        losses += [ops.cast(l, "float32") for l in term.losses]
    if not losses:
        return ops.zeros((), "float32")
    return scale_for_replicas(ops.sum(ops.stack(losses)))
