"""Symbolic views for a term's `build_term`, from the concrete arrays a test feeds it."""
import keras
import numpy as np

from tfkd.knowledge import View


def spec(x):
    """A KerasTensor of `x`'s shape with an unknown batch size."""
    return keras.KerasTensor((None,) + np.shape(x)[1:], dtype="float32")


def build(term, teacher, student):
    """Builds `term` on the symbolic twins of the `teacher` / `student` views; returns it."""
    sym = lambda v: View(None if v.outputs is None else spec(v.outputs),  # noqa: E731
                         {k: spec(x) for k, x in v.features.items()})
    term.build_term(sym(teacher), sym(student))
    return term
