"""Distillation schemes beyond offline teacher -> student KD, each a Keras-native trainer.

- `MutualLearning`: online distillation, two or more students teach each other (DML).
- `SelfDistillation`: auxiliary heads on a network's stages learn from its deepest output.
- `MultiTeacher`: several teachers, their soft targets combined per sample.
- `TeacherAssistant`: teacher -> assistant(s) -> student, one Distiller run per stage.
- `AdversarialDistillation`: a discriminator tells teacher from student; the student fools it.
- `DataFree`: a generator synthesises the inputs; the student never sees a training image.
- `DataFreeSR`: the same for super-resolution, the generator trained on the teacher's
  reconstruction of its patches ([79]).

All reuse the knowledge terms of `tfkd.knowledge` and the tap models of `tfkd.taps`.
"""

__all__ = ["MutualLearning", "SelfDistillation", "MultiTeacher", "TeacherAssistant",
           "AdversarialDistillation", "DataFree", "DataFreeSR"]


from tfkd.schemes.mutual import MutualLearning  # noqa: E402
from tfkd.schemes.self_distillation import SelfDistillation  # noqa: E402
from tfkd.schemes.multi_teacher import MultiTeacher  # noqa: E402
from tfkd.schemes.teacher_assistant import TeacherAssistant  # noqa: E402
from tfkd.schemes.adversarial import AdversarialDistillation  # noqa: E402
from tfkd.schemes.data_free import DataFree  # noqa: E402
from tfkd.schemes.data_free import DataFreeSR  # noqa: E402
