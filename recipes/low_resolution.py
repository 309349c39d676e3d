"""Low-resolution recipe: the student sees 2x or 4x downsampled images, the teacher full ones.

    python -m recipes.low_resolution --factor=4 \
        --teacher=../shared/models/cifar10_resnet20_teacher.keras --output_dir=runs/lowres4
    python -m recipes.low_resolution --factor=4 --sr_frontend --knowledge=soft_targets

The Distiller feeds each batch to the teacher as is and to the student through
`student_input=keras.layers.Resizing(H/f, W/f, interpolation="area")`, so one pipeline serves
both. The exported student takes the small images. With `--sr_frontend` the student starts
with a learned upsampling front end (bilinear resize back to the teacher's size plus a learned
3x3 residual correction), and a `Hint` from the student's `stage1` to the teacher's `stage1`
trains it with the teacher's full-resolution features (super-resolution-guided
distillation). Every op maps to the Edge TPU (RESIZE_BILINEAR, CONV_2D, ADD).
"""
from absl import app
from absl import flags

from recipes import common

common.define_flags(
    data=str(common.SHARED / "data" / "cifar10.npz"),
    teacher=str(common.SHARED / "models" / "cifar10_resnet20_teacher.keras"),
    student="mobile_cnn",
    knowledge=("soft_targets",),
    max_train=10000,
    epochs=10,
    cache_teacher=True,
    output_dir="runs/low_resolution",
)
flags.DEFINE_enum("factor", "4", ["2", "4"], "Downsampling factor of the student's images.")
flags.DEFINE_bool("sr_frontend", False, "Give the student a learned upsampling front end "
                                        "trained with the teacher's stage1 features.")


def make_student_factory(factor, sr_frontend):
    def make_student(config, input_shape, num_classes):
        import keras

        from tfkd import students

        if not sr_frontend:
            return students.build(config.student, input_shape, num_classes,
                                  width=config.student_width)
        h, w, c = input_shape

        def front_end(inputs):
            up = keras.layers.Resizing(h * factor, w * factor, interpolation="bilinear",
                                       name="upsample")(inputs)
            refine = keras.layers.Conv2D(c, 3, padding="same", name="sr_refine",
                                         kernel_initializer="zeros")(up)
            return keras.layers.Add(name="sr_out")([up, refine])

        return students.build(config.student, input_shape, num_classes,
                              width=config.student_width, front_end=front_end)

    return make_student


def low_resolution_task(image_shape, factor, sr_frontend):
    import keras
    import tfkd

    h, w = image_shape[0] // factor, image_shape[1] // factor
    extra = None
    if sr_frontend:
        extra = lambda config: [tfkd.knowledge.Hint("stage1", "stage1",
                                                    weight=config.feature_weight)]
    return common.classification_task(
        student_input=keras.layers.Resizing(h, w, interpolation="area", name="downsample"),
        make_student=make_student_factory(factor, sr_frontend),
        extra_knowledge=extra,
    )


def run(config, factor=4, sr_frontend=False):
    splits = common.load_data(config)
    task = low_resolution_task(splits.image_shape, int(factor), sr_frontend)
    return common.run(config, task, splits=splits)


def main(argv):
    del argv
    common.quiet_tf()
    config = common.from_flags()
    metrics = run(config, int(flags.FLAGS.factor), flags.FLAGS.sr_frontend)
    print(common.summary_line(metrics, config.output_dir))


if __name__ == "__main__":
    app.run(main)
