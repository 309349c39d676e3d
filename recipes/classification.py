"""Classification recipe: distil a teacher into an Edge TPU-friendly int8 student.

    python -m recipes.classification --data=../shared/data/cifar10.npz \
        --teacher=../shared/models/cifar10_resnet20_teacher.keras --max_train=10000 \
        --epochs=10 --output_dir=runs/cifar10
    python -m recipes.classification --data=path/to/image_folder --image_size=64 \
        --teacher_epochs=20 --output_dir=runs/folder

The default `--knowledge` is the mix `benchmarks/kd_cifar10.py` selects among the terms that
run on every teacher and student of the zoo by their common tap names (`stage1..3`, `pool`):
ReviewKD over the three stages and the pooled vector at the authors' CIFAR weight 5, warmed up
over `--warmup_epochs` (71.38 +- 0.29% vs 63.31 alone, 66.66 for keras.distillation and 69.57
for a FitNets hint at stage 2, 3 seeds of `mobile_cnn`). Its fusion modules cost about 4x a
hint's CPU time per step (678 vs 159 CPU s per benchmark run); the hint
(`--knowledge=hint:student_layer=stage2,teacher_layer=stage2`) is the cheap second choice.
`--helpfull` lists every flag. The task is `recipes.task.ClassificationTask`; the steps are
those of every recipe (`recipes.flow`).
"""
from absl import app

from recipes import config
from recipes import flow
from recipes.task import ClassificationTask

BEST_KNOWLEDGE = ("review_kd:student_layers=[stage1,stage2,stage3,pool],"
                  "teacher_layers=[stage1,stage2,stage3,pool],weight=warmup(5.0,{warmup_steps})")
config.define_flags(data=str(config.SHARED / "data" / "cifar10.npz"),
                    knowledge=BEST_KNOWLEDGE, output_dir="runs/classification")


def main(argv):
    del argv
    flow.main(ClassificationTask)


if __name__ == "__main__":
    app.run(main)
