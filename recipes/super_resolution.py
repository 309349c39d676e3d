"""Super-resolution recipe: distil an EDSR-style teacher into an int8 FSRCNN-family student.

    python -m recipes.super_resolution                     # T91 / Set5 / Set14, x2
    python -m recipes.super_resolution --scale=4 --knowledge=reconstruction_kd
    python -m recipes.super_resolution --teacher=my_edsr.keras --target=coral

`--data` is a folder holding `T91/` (training HR images) and `Set5/`, `Set14/` (test HR images),
the layout of `../shared/data/sr`. The models work on the Y channel (ITU-R BT.601, as SR papers
train and score). Training uses a bank of HR patches of `--image_size` pixels (a multiple of
`--scale`; 48 by default) cut from the training images at fixed random places
(`PATCHES_PER_IMAGE` each, `--max_train` patches at most), their LR inputs made by bicubic
downscaling with antialiasing (`tfkd.data.super_resolution`), flipped and rotated by 90 degrees
with `--augment`. Scores are the papers': PSNR and SSIM on the Y channel of the full test
images, `scale` border pixels shaved (`tfkd.tflite.sr_scores`: `tf.image.psnr` /
`tf.image.ssim`), for Set5 (`psnr`, `ssim`, the headline) and Set14 (`psnr_set14`,
`ssim_set14`), with bicubic upsampling as the reference row.

Models: the teacher is `tfkd.students.super_resolution.edsr` (`--teacher_width` x 64 filters,
`TEACHER_BLOCKS` residual blocks) or a user's `.keras` model via `--teacher` (float pixels in
[0, 255] of any size in, `scale` x larger out, one channel); the student is `fsrcnn`
(`--student_width`) with the transposed-conv upsampler, which int8-quantizes and maps to the
Edge TPU. Knowledge: `reconstruction_kd` (the student's image regresses the teacher's, L1) and
`fakd` on the LR feature maps (`mapping` of the student, `body` of the teacher); the
ground-truth L1 is the compiled loss, weighted by `--student_loss_weight`.

The `.tflite` takes any image size (its input is dynamic; LiteRT resizes it per image). With
`--target=coral` it is exported at a fixed `CORAL_TILE` x `CORAL_TILE` LR input, as the Edge TPU
needs, and evaluated tile by tile (`tfkd.tflite.super_resolve`). MediaPipe Tasks has no
super-resolution task, so the default target is `litert`.

The report holds the PSNR / SSIM table, sizes and latencies (the `.tflite` timed at a
`LATENCY_SIZE` x `LATENCY_SIZE` LR input), and crops of test images side by side (bicubic,
teacher, student alone, distilled, int8, HR).
"""
import numpy as np
from absl import app

from recipes import config
from recipes import flow
from recipes import pipeline
from recipes.task import Task

config.define_flags(
    data=str(config.SHARED / "data" / "sr"),
    image_size=48,
    teacher_arch="edsr", teacher_width=0.5, teacher_epochs=30,
    student="fsrcnn", student_width=1.0,
    # The best mix of benchmarks/super_resolution.py (x2 and x4, 3 seeds).
    knowledge="reconstruction_kd,fakd:student_layer=mapping,teacher_layer=body,weight=20",
    kd_weight=1.0,
    student_loss_weight=1.0,
    epochs=30, batch_size=16, learning_rate=1e-3, augment=True,
    qat_epochs=2, target="litert",
    output_dir="runs/super_resolution",
)

TRAIN_SET, TEST_SETS = "T91", ("Set5", "Set14")
PATCHES_PER_IMAGE = 16
TEACHER_BLOCKS = 6
CORAL_TILE = 64
LATENCY_SIZE = 128
# Columns of the report's picture, in order (a column is left out when the run has no such
# model), and how many test images and how large a crop.
PICTURE_MODELS = ("bicubic", "teacher", "student alone", "distilled student",
                  "int8 student (.tflite)")
PICTURE_IMAGES, PICTURE_CROP = 3, 96


class SuperResolutionTask(Task):
    """LR image in, `scale` x HR image out: L1 loss, PSNR / SSIM on the Y channel."""

    name = "super_resolution"
    headline = "psnr"
    output_meaning = "image"
    client_activation = None

    def __init__(self):
        self.scale, self.test_sets = 2, []

    # -- configuration ----------------------------------------------------------------------
    def check_config(self, cfg):
        from tfkd.students import super_resolution as sr

        if cfg.scale not in sr.SCALES:
            raise config.RecipeError(f"--scale={cfg.scale}: use one of {sr.SCALES}.")
        if cfg.image_size < 4 * cfg.scale or cfg.image_size % cfg.scale:
            raise config.RecipeError(
                f"--image_size={cfg.image_size} (the HR training patch) must be a multiple of "
                f"--scale={cfg.scale} and at least {4 * cfg.scale}, e.g. 48.")
        if cfg.student != "fsrcnn":
            raise config.RecipeError(f"--student={cfg.student!r}: the super-resolution student "
                                     "is 'fsrcnn' (tfkd.students.super_resolution).")
        if not cfg.teacher and cfg.teacher_arch not in ("edsr", "fsrcnn"):
            raise config.RecipeError(f"--teacher_arch={cfg.teacher_arch!r}: a teacher trained "
                                     "here is 'edsr' (or a wide 'fsrcnn').")
        if cfg.target == "mediapipe":
            raise config.RecipeError(
                "--target=mediapipe: MediaPipe Tasks has no super-resolution task. Use "
                "--target=litert (LiteRT's Interpreter / CompiledModel in an app) or "
                "--target=coral (a fixed-size int8 file for the Edge TPU).")
        self.scale = cfg.scale

    # -- data -------------------------------------------------------------------------------
    def load(self, cfg):
        import pathlib

        from tfkd import data
        from tfkd.data import super_resolution as srd

        root = pathlib.Path(cfg.data)
        missing = [n for n in (TRAIN_SET, TEST_SETS[0]) if not (root / n).is_dir()]
        if missing:
            raise data.DataError(
                f"--data='{root}' has no {' / '.join(missing)} folder: it must hold "
                f"{TRAIN_SET}/ (training HR images) and {TEST_SETS[0]}/ (optionally "
                f"{TEST_SETS[1]}/) test HR images, the layout of ../shared/data/sr.")
        hr_train = srd.load_sr_folder(root / TRAIN_SET, scale=cfg.scale, mode="y")
        x_train, y_train = patch_bank(hr_train, cfg.scale, cfg.image_size, PATCHES_PER_IMAGE,
                                      cfg.seed)
        lr_test, hr_test, self.test_sets = [], [], []
        for name in TEST_SETS:
            if not (root / name).is_dir():
                continue
            for lr, hr in srd.sr_pairs(root / name, cfg.scale, mode="y"):
                lr_test.append(lr)
                hr_test.append(hr)
                self.test_sets.append(name)
        if cfg.max_test:
            lr_test, hr_test = lr_test[:cfg.max_test], hr_test[:cfg.max_test]
            self.test_sets = self.test_sets[:cfg.max_test]
        if cfg.max_train:
            x_train, y_train = x_train[:cfg.max_train], y_train[:cfg.max_train]
        return data.Splits(train=(x_train, y_train),
                           test=(pipeline.image_list(lr_test), pipeline.image_list(hr_test)),
                           class_names=[],
                           source=f"{root} ({TRAIN_SET} patches {cfg.image_size} px HR, test "
                                  f"{' + '.join(dict.fromkeys(self.test_sets))} full images, "
                                  f"Y channel, x{cfg.scale})")

    def dataset(self, x, y, weights, batch_size, augment, seed):
        from tfkd.data import super_resolution as srd

        # tfkd.data's SR pipeline on the bank's HR patches, each one crop of its whole self:
        # its flips / rotations, and LR inputs made in the pipeline by the same `downscale`
        # that made `x` (so `x` itself is not needed here).
        return srd.sr_dataset(y, self.scale, patch_size=y.shape[1], batch_size=batch_size,
                              augment=augment, shuffle=True, seed=seed, patches_per_image=1)

    # -- models -----------------------------------------------------------------------------
    def build_teacher(self, cfg, splits, bn_momentum):
        from tfkd.students import super_resolution as sr

        if cfg.teacher_arch == "fsrcnn":
            return sr.fsrcnn(scale=self.scale, width=cfg.teacher_width, name="teacher")
        return sr.edsr(scale=self.scale, filters=max(8, int(round(64 * cfg.teacher_width))),
                       blocks=TEACHER_BLOCKS, name="teacher")

    def check_teacher(self, teacher, splits):
        from tfkd import data

        probe = np.zeros((1, 8, 8, 1), "float32")
        try:
            out = np.asarray(teacher(probe, training=False))
        except Exception as e:  # a fixed-size or other-channel teacher fails here
            raise data.DataError(
                f"The teacher `{teacher.name}` cannot run on an 8x8 one-channel image ({e}); a "
                "super-resolution teacher takes float Y pixels in [0, 255] of any size, input "
                "shape (None, None, 1).") from e
        if out.shape != (1, 8 * self.scale, 8 * self.scale, 1):
            raise data.DataError(
                f"The teacher `{teacher.name}` maps an 8x8x1 image to {out.shape[1:]}; at "
                f"--scale={self.scale} it must give ({8 * self.scale}, {8 * self.scale}, 1).")

    def build_student(self, cfg, splits, input_shape, bn_momentum):
        from tfkd.students import super_resolution as sr

        return sr.fsrcnn(scale=self.scale, width=cfg.student_width)

    def loss(self):
        import keras

        return keras.losses.MeanAbsoluteError()

    # -- evaluation and report --------------------------------------------------------------
    def predict(self, model, x):
        import tfkd.tflite as tfl

        return pipeline.image_list([tfl.super_resolve(model, lr) for lr in x])

    def reference_outputs(self, x):
        import tfkd.tflite as tfl

        return [("bicubic", pipeline.image_list([tfl.bicubic_upscale(lr, self.scale)
                                                 for lr in x]))]

    latency_input_shape = (1, LATENCY_SIZE, LATENCY_SIZE, 1)

    def deployable(self, model, target):
        import keras

        if target != "coral":
            return model, self.output_meaning
        # The Edge TPU compiles fixed shapes only: the same weights behind a fixed LR input.
        inputs = keras.Input((CORAL_TILE, CORAL_TILE, model.input_shape[-1]), name="lr")
        return keras.Model(inputs, model(inputs), name=f"{model.name}_tile{CORAL_TILE}"), \
            self.output_meaning

    def tflite_outputs(self, path, x):
        import tfkd.tflite as tfl
        from tfkd.tflite.evaluate import Runner

        runner = Runner(str(path))  # the file is loaded once, not once per image
        return pipeline.image_list([tfl.super_resolve(runner, lr) for lr in x])

    def scores(self, y_true, outputs):
        import tfkd.tflite as tfl

        result = {}
        for name in dict.fromkeys(self.test_sets):
            idx = [i for i, s in enumerate(self.test_sets) if s == name]
            s = tfl.sr_scores([y_true[i] for i in idx], [outputs[i] for i in idx], self.scale)
            suffix = "" if name == TEST_SETS[0] else f"_{name.lower()}"
            result[f"psnr{suffix}"], result[f"ssim{suffix}"] = s["psnr"], s["ssim"]
        return result

    def pictures(self, out_dir, examples):
        path = out_dir / "crops.png"
        names = [m for m in PICTURE_MODELS if m in examples["outputs"]]
        n = min(PICTURE_IMAGES, len(examples["y"]))
        draw_crops(path, [examples["y"][i] for i in range(n)],
                   {m: [examples["outputs"][m][i] for i in range(n)] for m in names})
        return [(f"Crops ({PICTURE_CROP} px of the HR image, where it has the most detail) of "
                 f"test images at x{self.scale}: each model's output and the HR original (Y "
                 "channel).", path.name)]


# -- data helpers ---------------------------------------------------------------------------
def patch_bank(hr_images, scale, patch_size, per_image, seed):
    """(LR patches, HR patches) as float32 arrays: one pass of
    `tfkd.data.super_resolution.sr_dataset` (`per_image` random HR crops of each image, no
    flips, LR by its `downscale`) gathered into one batch. A fixed bank (not fresh crops each
    epoch) keeps the flow's contract: training images as arrays, for calibration and the
    BatchNorm statistics alike."""
    from tfkd.data import super_resolution as srd

    ds = srd.sr_dataset(hr_images, scale, patch_size=patch_size,
                        batch_size=len(hr_images) * per_image, augment=False, shuffle=False,
                        seed=seed, patches_per_image=per_image)
    lr, hr = next(iter(ds))
    return lr.numpy(), hr.numpy()


def _busiest_corner(hr, crop):
    """Top-left corner of the `crop` x `crop` window with the largest gradient energy."""
    y = np.asarray(hr, np.float64)[..., 0]
    energy = np.abs(np.diff(y, axis=0))[:, :-1] + np.abs(np.diff(y, axis=1))[:-1, :]
    best, where = -1.0, (0, 0)
    step = max(1, crop // 4)
    for i in range(0, max(1, energy.shape[0] - crop + 1), step):
        for j in range(0, max(1, energy.shape[1] - crop + 1), step):
            e = energy[i:i + crop, j:j + crop].sum()
            if e > best:
                best, where = e, (i, j)
    return where


def draw_crops(path, hr_images, outputs):
    """A grid: one row per test image; columns each model's output, then the HR original."""
    from recipes import report

    rows = []
    for r, hr in enumerate(hr_images):
        crop = min(PICTURE_CROP, hr.shape[0], hr.shape[1])
        i, j = _busiest_corner(hr, crop)
        panels = [outputs[m][r] for m in outputs] + [hr]
        rows.append([np.clip(np.round(np.asarray(p)[i:i + crop, j:j + crop, 0]), 0, 255)
                     .astype(np.uint8) for p in panels])
    report.image_grid(path, rows, list(outputs) + ["HR"], panel_size=(2.0, 2.1), cmap="gray")


def main(argv):
    del argv
    flow.main(SuperResolutionTask)


if __name__ == "__main__":
    app.run(main)
