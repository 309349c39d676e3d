"""Teacher assistants: multi-stage distillation teacher -> assistant(s) -> student."""
import keras

from tfkd.distiller import Distiller
from tfkd.knowledge import SoftTargets
from tfkd.knowledge import as_knowledge
from tfkd.training import Holder
from tfkd.training import Step
from tfkd.training import Trainer
from tfkd.training import check_model
from tfkd.training import clone
from tfkd.training import deserialize


@keras.saving.register_keras_serializable(package="tfkd")
class TeacherAssistant(Trainer):
    """Bridges a large teacher-student gap through intermediate "assistant" models.

    Paper: S. I. Mirzadeh, M. Farajtabar, A. Li, N. Levine, A. Matsukawa, H. Ghasemzadeh,
    "Improved Knowledge Distillation via Teacher Assistant", AAAI 2020.

    The chain `teacher -> assistants[0] -> ... -> student` is trained stage by stage in one
    `fit` call: stage `i` is a `tfkd.Distiller(student=chain[i+1], teacher=chain[i],
    knowledge=<fresh copies of knowledge>)`, compiled with a fresh copy of the optimizer,
    loss and metrics given to `compile`, and fitted with the arguments given to `fit`. Every
    model of the chain is kept (`ta.assistants`, `ta.student`, `ta.distillers`): the
    assistants are useful students in their own right.

    `fit` returns a `keras.callbacks.History` whose `history` holds every stage's metrics as
    `<stage model name>/<metric>` (e.g. `assistant/soft_targets_loss`, `student/loss`);
    `ta.histories` maps each stage to its own History. `evaluate` and `predict` use the final
    student. Save/load (`ta.save("ta.keras")`, `keras.models.load_model`) keeps the chain.

    Args:
        teacher: trained Keras model (frozen).
        assistants: one or more Keras models, largest first, each trained from the previous.
        student: the final Keras model.
        knowledge: the terms of every stage (copied per stage; default
            `[SoftTargets(temperature=4.0)]`). Feature terms must name layers that exist in
            every pair of the chain.
        student_loss_weight: the Distillers' task-loss weight.
        stage_epochs: optional list, epochs of each stage (default: `fit`'s `epochs`).

    Example:

    ```python
    ta = tfkd.schemes.TeacherAssistant(teacher, [assistant], student)
    ta.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
               metrics=["accuracy"])
    ta.fit(x, y, epochs=10)
    ta.student.save("student.keras")
    ```
    """

    def __init__(self, teacher, assistants, student, knowledge=None, student_loss_weight=1.0,
                 stage_epochs=None, name="teacher_assistant", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = "TeacherAssistant"
        check_model(teacher, "teacher", owner)
        check_model(student, "student", owner)
        if isinstance(assistants, keras.Model):
            assistants = [assistants]
        assistants = list(assistants or [])
        if not assistants:
            raise ValueError(
                "TeacherAssistant needs at least one assistant model between the teacher and "
                "the student; with none, use tfkd.Distiller(student, teacher) directly."
            )
        for i, a in enumerate(assistants):
            check_model(a, f"assistants[{i}]", owner)
        chain = [teacher, *assistants, student]
        if len({id(m) for m in chain}) != len(chain):
            raise ValueError("TeacherAssistant: the same model object appears twice in the chain "
                             "teacher -> assistants -> student; pass distinct models.")
        names = [m.name for m in chain]
        if len(set(names)) != len(names):
            raise ValueError(f"TeacherAssistant: the chain's models need distinct names (they "
                             f"name the stages and metrics); got {names}.")
        if knowledge is None:
            knowledge = [SoftTargets(temperature=4.0)]
        if not isinstance(knowledge, (list, tuple)):
            knowledge = [knowledge]
        self.knowledge = [as_knowledge(k) for k in knowledge]
        self.teacher = teacher
        self.assistants = assistants
        self.student = student
        self.student_loss_weight = float(student_loss_weight)
        if stage_epochs is not None:
            stage_epochs = [int(e) for e in stage_epochs]
            if len(stage_epochs) != len(chain) - 1:
                raise ValueError(
                    f"TeacherAssistant: `stage_epochs` needs one entry per stage "
                    f"({len(chain) - 1}: {' -> '.join(names)}), got {len(stage_epochs)}."
                )
        self.stage_epochs = stage_epochs
        self._stages = Holder()
        self._stages.distillers = []
        self.histories = {}
        self.declare(["student_loss"])
        # Fail now, not after the first stage has trained: build every stage's Distiller once.
        for i in range(len(chain) - 1):
            self._make_distiller(i)
        self.built = True

    @property
    def chain(self):
        return [self.teacher, *self.assistants, self.student]

    @property
    def distillers(self):
        """The Distiller of each stage, from the last `fit` (empty before)."""
        return list(self._stages.distillers)

    def _make_distiller(self, i):
        chain = self.chain
        trainable = chain[i].trainable
        d = Distiller(chain[i + 1], chain[i], knowledge=[clone(k) for k in self.knowledge],
                      student_loss_weight=self.student_loss_weight,
                      name=f"stage{i + 1}_{chain[i + 1].name}")
        chain[i].trainable = trainable  # the Distiller froze it; only its stage keeps it so
        return d

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    compiled_task_loss = True

    def requires_task_loss(self):
        return self.student_loss_weight > 0

    def _missing_loss_message(self):
        return ("TeacherAssistant.compile() needs the task `loss` of every stage, e.g. "
                "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True).")

    def optimizer_groups(self):
        return {"optimizer": [self.student]}

    def _teaching_modules(self):
        return [self.teacher]

    def compile_from_config(self, config):
        # The chain's own optimizer never steps (each stage compiles a fresh copy): it is
        # saved unbuilt and must load unbuilt.
        self.compile(**{k: deserialize(v) for k, v in config.items()})

    def learn(self, x, y, sample_weight, teaching, training):
        """`evaluate` (and `train_on_batch`) act on the final student alone."""
        y_pred = self.student(x, training=training)
        losses = {}
        if self._compile_args.get("loss") is not None and y is not None:
            losses["student_loss"] = self.task_loss(y, y_pred, sample_weight)
        return Step(losses, y_pred)

    def fit(self, x=None, y=None, epochs=1, **kwargs):
        """Runs every stage in turn; returns a History of `<stage model>/<metric>` series."""
        if self._compile_args is None:
            raise RuntimeError("Call compile() on the TeacherAssistant before fit().")
        chain = self.chain
        self._stages.distillers = []
        merged = keras.callbacks.History()
        merged.history = {}
        merged.epoch = []
        for i in range(len(chain) - 1):
            teacher, student = chain[i], chain[i + 1]
            was_trainable = teacher.trainable
            distiller = self._make_distiller(i)
            teacher.trainable = False
            # Each stage gets fresh copies of what was given to compile (its own slots).
            config = {k: deserialize(v) for k, v in self.get_compile_config().items()}
            distiller.compile(**config)
            stage_epochs = self.stage_epochs[i] if self.stage_epochs else epochs
            try:
                history = distiller.fit(x, y, epochs=stage_epochs, **kwargs)
            finally:
                teacher.trainable = was_trainable
            self._stages.distillers.append(distiller)
            self.histories[student.name] = history
            for key, values in history.history.items():
                merged.history[f"{student.name}/{key}"] = list(values)
            merged.epoch = list(history.epoch)
        self.history = merged
        return merged

    # -- serialization: the constructor's arguments, by name (tfkd.training.Trainer) ----
    config_keys = ('teacher', 'assistants', 'student', 'knowledge', 'student_loss_weight',
                   'stage_epochs')
    teacher_keys = ('teacher',)
