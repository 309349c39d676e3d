"""Online distillation: deep mutual learning of two or more students trained together."""
import keras
import tensorflow as tf
from keras import ops

from tfkd.knowledge import SoftTargets
from tfkd.knowledge import View
from tfkd.taps import Tap
from tfkd.training import MAIN
from tfkd.training import Holder
from tfkd.training import Step
from tfkd.training import Trainer
from tfkd.training import check_model
from tfkd.training import check_same_inputs
from tfkd.training import logits_width
from tfkd.training import weighted


@keras.saving.register_keras_serializable(package="tfkd")
class MutualLearning(Trainer):
    """Deep mutual learning: each student learns from the labels and from its peers.

    Paper: Y. Zhang, T. Xiang, T. M. Hospedales, H. Lu, "Deep Mutual Learning", CVPR 2018
    (the ensemble-of-peers variant is the paper's DML_e; see also KDCL, Guo et al. CVPR 2020).

    For students `1..K` with logits `z_k`, per student `k`:

        L_k = student_loss_weight * task(y, z_k)
              + kd_weight * mean_{j != k} SoftTargets_T(teacher=sg(z_j), student=z_k)

    `sg` stops the gradient: a peer teaches, it is not pulled. With `ensemble=True` the peers
    teach as one: their softened distributions are averaged, `q = mean_{j != k} softmax(z_j/T)`,
    and `z_k` matches `q` through the same `SoftTargets` term (fed the logits `T * log q`).
    The KL divergence is `tfkd.knowledge.SoftTargets` (T^2-scaled); nothing is re-implemented.

    One optimizer updates all students. Because each student's loss depends on its own
    weights only (peers are stopped), this is the same as one optimizer of that
    configuration per student (Adam's slots are per variable); the paper updates the students
    one after the other within a step, this updates them together from the same batch.

    Metrics: `loss` (sum over students), and per student `<name>_loss` (task loss),
    `<name>_kd_loss`, and each compiled metric as `<name>_<metric>` (e.g. `s1_accuracy`).

    `call` returns `{student_name: logits}`. Each student stays a plain Keras model:
    `ml.get_student("s1").save("s1.keras")` loads without tfkd.

    Args:
        students: list of two or more Keras models with the same inputs and classes, and
            distinct names (the names key the outputs and metrics).
        temperature: softening temperature `T` of the peers' outputs (DML: 1).
        kd_weight: weight of the mutual (KL) term of each student.
        ensemble: distil from the average of the peers instead of from each peer.
        student_loss_weight: weight of each student's task loss.

    Example:

    ```python
    ml = tfkd.schemes.MutualLearning([net_a, net_b], temperature=1.0)
    ml.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               metrics=["accuracy"])
    ml.fit(x, y, epochs=10)          # logs a_accuracy, b_accuracy, a_kd_loss, ...
    best = ml.get_student("a")
    ```
    """

    def __init__(self, students, temperature=1.0, kd_weight=1.0, ensemble=False,
                 student_loss_weight=1.0, name="mutual_learning", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(students, keras.Model) or not isinstance(students, (list, tuple)):
            students = [students]
        students = list(students)
        if len(students) < 2:
            raise ValueError(
                f"MutualLearning needs two or more students that teach each other; got "
                f"{len(students)}. Pass students=[model_a, model_b, ...]. To distil one student "
                "from a fixed, trained teacher use tfkd.Distiller; for one network teaching "
                "itself use tfkd.schemes.SelfDistillation."
            )
        for i, s in enumerate(students):
            check_model(s, f"students[{i}]", "MutualLearning")
        if len({id(s) for s in students}) != len(students):
            raise ValueError("MutualLearning: the same model object is given twice; pass "
                             "distinct students (clone one with keras.models.clone_model).")
        names = [s.name for s in students]
        if len(set(names)) != len(names):
            raise ValueError(
                f"MutualLearning: student names must be distinct (they name the outputs and "
                f"metrics); got {names}. Pass name= when building each model."
            )
        self.set_numbers("MutualLearning", positive=("temperature",), temperature=temperature,
                         kd_weight=kd_weight, student_loss_weight=student_loss_weight)
        self.ensemble = bool(ensemble)
        self.students = students
        self._taps = Holder()
        self._taps.students = [Tap(s, (), side="student") for s in students]
        views = [tap.symbolic_view() for tap in self._taps.students]
        widths = [logits_width(v, f"student `{n}`", "MutualLearning") for v, n in zip(views, names)]
        if len(set(widths)) != 1:
            raise ValueError(
                "MutualLearning: the students predict different numbers of classes: "
                f"{dict(zip(names, widths))}. Give every student the same classification head."
            )
        check_same_inputs(
            "MutualLearning", [(f"student `{s.name}`", s) for s in students],
            "All students see the same batch: put a keras.layers.Resizing layer at the front "
            "of the smaller-input students.")
        self.terms = [
            SoftTargets(temperature=self.temperature, weight=self.kd_weight, name=f"{n}_kd")
            for n in names
        ]
        for term, view in zip(self.terms, views):
            term.build_term(view, view)
        self.declare([f"{n}_loss" for n in names] + [f"{n}_kd_loss" for n in names])
        self.built = True  # everything is built here; nothing waits for data

    # -- API -------------------------------------------------------------------------------
    def get_student(self, key):
        """The student at index `key` or with name `key`: a plain Keras model."""
        if isinstance(key, int):
            return self.students[key]
        for s in self.students:
            if s.name == key:
                return s
        raise ValueError(f"No student named {key!r}; the students are "
                         f"{[s.name for s in self.students]}.")

    def call(self, inputs, training=False):
        return {s.name: s(inputs, training=training) for s in self.students}

    def metric_keys(self):
        return [s.name for s in self.students]

    def optimizer_groups(self):
        return {MAIN: list(self.students)}

    def requires_task_loss(self):
        return self.student_loss_weight > 0

    # -- the step: every student is a learner; each one's peers, stopped, are its teachers --
    def _peer_view(self, logits, k):
        peers = [tf.stop_gradient(z) for j, z in enumerate(logits) if j != k]
        if not self.ensemble or len(peers) == 1:
            return [View(z) for z in peers]
        t = self.temperature
        probs = ops.mean(ops.stack([ops.softmax(z / t, axis=-1) for z in peers]), axis=0)
        # softmax(T * log(q) / T) == q: the averaged distribution as logits for SoftTargets.
        return [View(t * ops.log(ops.maximum(probs, 1e-12)))]

    def learn(self, x, y, sample_weight, teaching, training):
        views = [tap(x, training=training) for tap in self._taps.students]
        logits = [ops.cast(v.output(), "float32") for v in views]
        losses = {}
        for k, (student, term, view) in enumerate(zip(self.students, self.terms, views)):
            losses.update(self.student_losses(y, view.output(), sample_weight,
                                              name=f"{student.name}_loss"))
            peers = self._peer_view(logits, k)
            kd = sum(term.loss(p, view, y_true=y, sample_weight=sample_weight) for p in peers)
            losses[f"{term.name}_loss"] = weighted(kd / len(peers), term.current_weight())
        return Step(losses, {s.name: v.outputs for s, v in zip(self.students, views)})

    # -- serialization: the constructor's arguments, by name (tfkd.training.Trainer) ----
    config_keys = ('students', 'temperature', 'kd_weight', 'ensemble', 'student_loss_weight')
