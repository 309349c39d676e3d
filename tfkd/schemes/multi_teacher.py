"""Multi-teacher distillation: several teachers' soft targets, combined per sample, and hints.

Longer than the other schemes (~230 lines of code) for what it validates up front: K teachers
with their own input adapters, three weightings (fixed, confidence, learned) and hints bound to
a teacher by index or name. The step itself is `learn` (~30 lines).
"""
import keras
import tensorflow as tf
from keras import ops

from tfkd.knowledge import Hint
from tfkd.knowledge import Knowledge
from tfkd.knowledge import SoftTargets
from tfkd.knowledge import as_knowledge
from tfkd.taps import Tap
from tfkd.training import MAIN
from tfkd.training import Holder
from tfkd.training import Step
from tfkd.training import Trainer
from tfkd.training import check_callable
from tfkd.training import check_model
from tfkd.training import check_same_inputs
from tfkd.training import deserialize
from tfkd.training import logits_width
from tfkd.training import reduce_batch
from tfkd.training import serialize
from tfkd.training import term_losses
from tfkd.training import unique_names
from tfkd.training import weighted

WEIGHTINGS = ("fixed", "confidence", "learned")


@keras.saving.register_keras_serializable(package="tfkd")
class MultiTeacher(Trainer):
    """Distils several teachers into one student; their soft targets are weighted per sample.

    Per sample `i`, with teachers `k = 1..K`, logits `z_k`, the student's `z_s`, and the
    per-teacher soft-target loss `kd_k,i = SoftTargets_T(teacher=z_k, student=z_s)_i` (the
    `tfkd.knowledge.SoftTargets` term, T^2 KL):

        L = student_loss_weight * task(y, z_s) + kd_weight * mean_i sum_k w_k,i * kd_k,i
            + sum_hints weight * hint_loss

    `weighting` chooses `w` (each row sums to 1):
      - `"fixed"`: `teacher_weights` (default uniform), normalised; the same for every sample
        (the averaged-teacher baseline of You et al., KDD 2017).
      - `"confidence"`: `w_k,i = softmax_k(-CE(y_i, z_k,i))`: the teachers that are right about
        sample `i` count most (confidence-aware multi-teacher KD, Zhang et al., ICASSP 2022).
        Needs labels.
      - `"learned"`: `w = softmax(a)` with a trainable `a` (K values), fitted to make the
        weighted teacher ensemble `sum_k w_k softmax(z_k)` predict the labels (its CE,
        reported as `ensemble_loss`, trains `a` alone); the student's KD uses `w` with the
        gradient stopped, so the student cannot pick the teacher it finds easiest.

    Teachers may differ in architecture and input size: `teacher_inputs[k]` (e.g.
    `keras.layers.Resizing(32, 32)`) maps the batch to teacher `k`'s input. All teachers and
    the student must predict the same classes. Feature hints from any teacher:
    `hints=[(teacher, term), ...]` where `teacher` is an index or name and `term` a
    feature-knowledge term (`Hint(student_layer, teacher_layer)`, `AttentionTransfer`, ...)
    or a `(student_layer, teacher_layer)` pair (a `Hint`). Each hint's adapter trains with the
    student; `mt.student` stays a plain Keras model.

    Metrics: `loss`, `student_loss`, `soft_targets_loss` (the combined KD term),
    `<teacher>_weight` (mean weight of each teacher over the batch), each hint's
    `<name>_loss`, `ensemble_loss` (learned weighting), and compiled metrics of the student.

    Args:
        student: the Keras model to train.
        teachers: list of trained Keras models (frozen; inference mode).
        weighting: "fixed", "confidence" or "learned".
        teacher_weights: fixed weights (>= 0), one per teacher, for `weighting="fixed"`.
        temperature: `T` of the soft targets.
        kd_weight: weight of the combined soft-target term.
        hints: list of `(teacher index or name, term or (student_layer, teacher_layer))`.
        teacher_inputs: list (one per teacher) of None or callables applied to the batch.
        student_input: optional callable applied to the batch before the student.
        student_loss_weight: weight of the task loss.
    """

    def __init__(self, student, teachers, weighting="fixed", teacher_weights=None,
                 temperature=4.0, kd_weight=1.0, hints=(), teacher_inputs=None,
                 student_input=None, student_loss_weight=1.0, name="multi_teacher", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = "MultiTeacher"
        check_model(student, "student", owner)
        if isinstance(teachers, keras.Model) or not isinstance(teachers, (list, tuple)):
            teachers = [teachers]
        teachers = list(teachers)
        if not teachers:
            raise ValueError("MultiTeacher needs at least one teacher (usually two or more).")
        for i, t in enumerate(teachers):
            check_model(t, f"teachers[{i}]", owner)
            if t is student:
                raise ValueError(f"MultiTeacher: teachers[{i}] is the student itself.")
        names = [t.name for t in teachers]
        if len(set(names)) != len(names) or len({id(t) for t in teachers}) != len(teachers):
            raise ValueError(
                f"MultiTeacher: teachers must be distinct models with distinct names (they name "
                f"the metrics); got {names}."
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(f"MultiTeacher: `weighting` must be one of {WEIGHTINGS}, got "
                             f"{weighting!r}.")
        n = len(teachers)
        if teacher_weights is not None:
            if weighting != "fixed":
                raise ValueError("MultiTeacher: `teacher_weights` applies to weighting='fixed' "
                                 f"only; got weighting={weighting!r}.")
            teacher_weights = [float(w) for w in teacher_weights]
            if len(teacher_weights) != n or min(teacher_weights) < 0 or sum(teacher_weights) <= 0:
                raise ValueError(
                    f"MultiTeacher: `teacher_weights` must hold {n} non-negative numbers (one "
                    f"per teacher) with a positive sum; got {teacher_weights}."
                )
        if teacher_inputs is None:
            teacher_inputs = [None] * n
        teacher_inputs = list(teacher_inputs)
        for i, adapter in enumerate(teacher_inputs):
            check_callable(adapter, f"teacher_inputs[{i}]", owner)
        check_callable(student_input, "student_input", owner)
        if len(teacher_inputs) != n:
            raise ValueError(f"MultiTeacher: `teacher_inputs` must have one entry (None or a "
                             f"callable) per teacher: {n}, got {len(teacher_inputs)}.")
        self.student = student
        self.teachers = teachers
        self.freeze(*teachers)
        self.weighting = weighting
        self.teacher_weights = teacher_weights
        self.set_numbers(owner, positive=("temperature",), temperature=temperature,
                         kd_weight=kd_weight, student_loss_weight=student_loss_weight)
        self.teacher_inputs = teacher_inputs
        self.student_input = student_input

        # Hints: (teacher index, term).
        bound = []
        for entry in hints or ():
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise ValueError(
                    "MultiTeacher: each hint is (teacher, term) with teacher an index or name, "
                    f"e.g. (0, tfkd.knowledge.Hint('block2', 'block2')); got {entry!r}."
                )
            ref, term = entry
            k = self._teacher_index(ref)
            if isinstance(term, (list, tuple)):
                term = Hint(*term)
            if isinstance(term, dict):
                term = deserialize(term)
            term = as_knowledge(term)
            if not isinstance(term, Knowledge):
                raise TypeError(f"MultiTeacher: hint {entry!r} is not a knowledge term.")
            if term.name == term.default_name:
                term.name = f"{term.name}_{names[k]}"
            bound.append((k, term))
        unique_names([t for _, t in bound])
        self.hint_terms = [t for _, t in bound]
        self.hint_teachers = [k for k, _ in bound]

        self._taps = Holder()
        self._taps.student = Tap(student, _unique(f for t in self.hint_terms
                                                  for f in t.student_features), side="student")
        self._taps.teachers = [
            Tap(t, _unique(f for k2, term in bound if k2 == k for f in term.teacher_features),
                side=f"teacher `{t.name}`")
            for k, t in enumerate(teachers)
        ]
        s_view = self._taps.student.symbolic_view()
        t_views = [tap.symbolic_view() for tap in self._taps.teachers]
        widths = {names[k]: logits_width(v, f"teacher `{names[k]}`", owner)
                  for k, v in enumerate(t_views)}
        if len(set(widths.values())) != 1:
            raise ValueError(
                f"MultiTeacher: the teachers predict different numbers of classes: {widths}. "
                "Soft targets can only be combined over the same classes; use teachers trained "
                "on the same label set (or give them a common head)."
            )
        s_width = logits_width(s_view, "student", owner)
        if s_width != next(iter(widths.values())):
            raise ValueError(
                f"MultiTeacher: the student predicts {s_width} classes but the teachers "
                f"{next(iter(widths.values()))}."
            )
        self._check_inputs()
        self.kd_term = SoftTargets(temperature=self.temperature, weight=self.kd_weight)
        self.kd_term.build_term(t_views[0], s_view)
        for k, term in bound:
            term.build_term(t_views[k], s_view)
        if weighting == "learned":
            self.teacher_logit_weights = self.add_weight(
                shape=(n,), initializer="zeros", name="teacher_logit_weights")
        self.declare(["student_loss", "soft_targets_loss",
                      *[f"{t.name}_loss" for t in self.hint_terms]]
                     + (["ensemble_loss"] if weighting == "learned" else []),
                     stats=[f"{n_}_weight" for n_ in names])
        self.built = True  # everything is built here; nothing waits for data

    def _teacher_index(self, ref):
        names = [t.name for t in self.teachers]
        if isinstance(ref, int) and -len(names) <= ref < len(names):
            return ref % len(names)
        if isinstance(ref, str) and ref in names:
            return names.index(ref)
        raise ValueError(f"MultiTeacher: hint teacher {ref!r} is neither an index below "
                         f"{len(names)} nor one of the teacher names {names}.")

    def _check_inputs(self):
        if self.student_input is not None:
            return
        for t, adapter in zip(self.teachers, self.teacher_inputs):
            if adapter is None:
                check_same_inputs(
                    "MultiTeacher", [(f"teacher `{t.name}`", t), ("student", self.student)],
                    "Pass teacher_inputs=[..., keras.layers.Resizing(h, w), ...] (one entry "
                    "per teacher, None where no adapter is needed).")

    # -- API -------------------------------------------------------------------------------
    def call(self, inputs, training=False):
        if self.student_input is not None:
            inputs = self.student_input(inputs)
        return self.student(inputs, training=training)

    def weights_for(self, t_logits, y):
        """(batch, K) teacher weights for these teacher logits and labels."""
        n = len(t_logits)
        batch = ops.shape(t_logits[0])[0]
        if self.weighting == "fixed":
            w = self.teacher_weights or [1.0] * n
            w = ops.convert_to_tensor([x / sum(w) for x in w], "float32")
            return ops.broadcast_to(w[None, :], (batch, n))
        if self.weighting == "learned":
            w = ops.softmax(ops.cast(self.teacher_logit_weights, "float32"))
            return ops.broadcast_to(tf.stop_gradient(w)[None, :], (batch, n))
        if y is None:
            raise ValueError("MultiTeacher(weighting='confidence') needs labels: feed (x, y).")
        ce = ops.stack([_sparse_or_dense_ce(y, z) for z in t_logits], axis=-1)
        return ops.softmax(-ce, axis=-1)

    def optimizer_groups(self):
        learned = [self.teacher_logit_weights] if self.weighting == "learned" else []
        inputs = [self.student_input] if isinstance(self.student_input, keras.layers.Layer) else []
        return {MAIN: [self.student, *inputs, *self.hint_terms, *learned]}

    def _teaching_modules(self):
        return list(self.teachers)

    def requires_task_loss(self):
        return self.student_loss_weight > 0

    # -- the step: every teacher once (outside the tape), the student once --------------------
    def teach(self, x, y):
        views = []
        for tap, adapter in zip(self._taps.teachers, self.teacher_inputs):
            t_x = adapter(x) if adapter is not None else x
            views.append(tap(t_x, training=False))
        return views

    def learn(self, x, y, sample_weight, teaching, training):
        t_views = teaching
        s_x = self.student_input(x) if self.student_input is not None else x
        s_view = self._taps.student(s_x, training=training)
        t_logits = [ops.cast(v.output(), "float32") for v in t_views]
        w = self.weights_for(t_logits, y)
        per_teacher = ops.stack(
            [self.kd_term.compute(v, s_view) for v in t_views], axis=-1)  # (batch, K)
        losses = {"soft_targets_loss": weighted(
            reduce_batch(ops.sum(w * per_teacher, axis=-1), sample_weight), self.kd_weight)}
        losses.update(self.student_losses(y, s_view.output(), sample_weight))
        for k, term in zip(self.hint_teachers, self.hint_terms):
            losses.update(term_losses([term], t_views[k], s_view, y, sample_weight))
        if self.weighting == "learned":
            if y is None:
                raise ValueError("MultiTeacher(weighting='learned') needs labels: feed (x, y).")
            a = ops.softmax(ops.cast(self.teacher_logit_weights, "float32"))
            probs = ops.sum(ops.stack([ops.softmax(z, axis=-1) for z in t_logits], -1) * a,
                            axis=-1)
            losses["ensemble_loss"] = reduce_batch(
                _sparse_or_dense_ce(y, probs, from_probs=True), sample_weight)
        mean_w = ops.mean(w, axis=0)
        stats = {f"{t.name}_weight": mean_w[k] for k, t in enumerate(self.teachers)}
        return Step(losses, s_view.outputs, stats)

    # -- serialization: the constructor's arguments, by name (tfkd.training.Trainer) ----
    config_keys = ('student', 'teachers', 'weighting', 'teacher_weights', 'temperature', 'kd_weight', 'teacher_inputs', 'student_input', 'student_loss_weight')
    teacher_keys = ('teachers',)

    def get_config(self):
        config = super().get_config()
        names = [t.name for t in self.teachers]
        config["hints"] = [[names[k], serialize(t)]
                           for k, t in zip(self.hint_teachers, self.hint_terms)]
        return config


def _unique(names):
    return list(dict.fromkeys(names))


def _sparse_or_dense_ce(y, z, from_probs=False):
    """Per-sample cross-entropy of logits (or probabilities) `z` against sparse/one-hot `y`."""
    classes = z.shape[-1]
    y = ops.convert_to_tensor(y)
    if len(y.shape) >= 2 and y.shape[-1] == classes and classes > 1:
        onehot = ops.cast(y, "float32")
    else:
        onehot = ops.one_hot(ops.reshape(ops.cast(y, "int32"), (-1,)), classes, dtype="float32")
    log_p = ops.log(ops.maximum(z, 1e-12)) if from_probs else ops.log_softmax(z, axis=-1)
    return -ops.sum(onehot * log_p, axis=-1)
