"""Teacher assistants: multi-stage distillation teacher -> assistant(s) -> student."""
import keras

from tfkd.distiller import Distiller
from tfkd.knowledge import SoftTargets
from tfkd.knowledge import as_knowledge
from tfkd.schemes import _common as c


@keras.saving.register_keras_serializable(package="tfkd")
class TeacherAssistant(keras.Model):
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
        c.check_model(teacher, "teacher", owner)
        c.check_model(student, "student", owner)
        if isinstance(assistants, keras.Model):
            assistants = [assistants]
        assistants = list(assistants or [])
        if not assistants:
            raise ValueError(
                "TeacherAssistant needs at least one assistant model between the teacher and "
                "the student; with none, use tfkd.Distiller(student, teacher) directly."
            )
        for i, a in enumerate(assistants):
            c.check_model(a, f"assistants[{i}]", owner)
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
        self._stages = c.holder()
        self._stages.distillers = []
        self.histories = {}
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
        d = Distiller(chain[i + 1], chain[i], knowledge=[c.clone(k) for k in self.knowledge],
                      student_loss_weight=self.student_loss_weight,
                      name=f"stage{i + 1}_{chain[i + 1].name}")
        chain[i].trainable = trainable  # the Distiller froze it; only its stage keeps it so
        return d

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        if loss is None and self.student_loss_weight > 0:
            raise ValueError(
                "TeacherAssistant.compile() needs the task `loss` of every stage, e.g. "
                "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)."
            )
        self._stage_compile = {"optimizer": optimizer, "loss": loss, "metrics": metrics,
                               **kwargs}
        super().compile(optimizer=c.clone(optimizer), loss=c.clone(loss),
                        metrics=[c.clone(m) for m in (metrics or [])], **kwargs)

    def fit(self, x=None, y=None, epochs=1, **kwargs):
        """Runs every stage in turn; returns a History of `<stage model>/<metric>` series."""
        if getattr(self, "_stage_compile", None) is None:
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
            cfg = dict(self._stage_compile)
            distiller.compile(optimizer=c.clone(cfg.pop("optimizer")), loss=c.clone(cfg.pop("loss")),
                              metrics=[c.clone(m) for m in (cfg.pop("metrics") or [])], **cfg)
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

    def get_config(self):
        return {
            "name": self.name,
            "teacher": c.ser(self.teacher),
            "assistants": [c.ser(a) for a in self.assistants],
            "student": c.ser(self.student),
            "knowledge": [c.ser(k) for k in self.knowledge],
            "student_loss_weight": self.student_loss_weight,
            "stage_epochs": self.stage_epochs,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        de = lambda v: c.de(v, custom_objects)  # noqa: E731
        for key in ("teacher", "student"):
            config[key] = de(config[key])
        config["assistants"] = [de(a) for a in config["assistants"]]
        config["knowledge"] = [de(k) for k in config.get("knowledge", [])]
        return cls(**config)

    def get_compile_config(self):
        cfg = getattr(self, "_stage_compile", None)
        if cfg is None:
            return None
        out = {}
        for key, value in cfg.items():
            if key == "metrics":
                out[key] = [c.ser(m) for m in (value or [])]
            elif value is not None:
                out[key] = c.ser(value)
        return out

    def compile_from_config(self, config):
        de = lambda v: c.de(v) if isinstance(v, dict) else v  # noqa: E731
        config = {k: [de(m) for m in v] if k == "metrics" and v else de(v)
                  for k, v in config.items()}
        self.compile(**config)
