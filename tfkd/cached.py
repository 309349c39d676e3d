"""The batch format of a cached teacher: written by `tfkd.data.cache_teacher`, read by trainers.

A cached batch is `x = {"inputs": student inputs, "teacher": {"outputs": ..., "features":
{name: ...}}}` (features optional): the teacher ran once over the data, and a step runs only
the student.
"""
from tfkd.knowledge.base import View

INPUTS = "inputs"
TEACHER = "teacher"


def pack(inputs, outputs, features=None):
    """The `x` of a cached batch (or of a whole cached array set)."""
    teacher = {"outputs": outputs}
    if features:
        teacher["features"] = dict(features)
    return {INPUTS: inputs, TEACHER: teacher}


def is_cached(x):
    return isinstance(x, dict) and set(x) == {INPUTS, TEACHER}


def split(x):
    """(inputs, cached teacher `View`) for a cached batch; (x, None) for any other batch."""
    if is_cached(x):
        teacher = x[TEACHER]
        return x[INPUTS], View(teacher["outputs"], teacher.get("features"))
    return x, None
