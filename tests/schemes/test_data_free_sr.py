"""DataFreeSR: an SR student learns from an SR teacher on generated LR patches only."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd.schemes import DataFreeSR
from tfkd.students import super_resolution as sr
from tiny_models import convnet

MAE = keras.losses.MeanAbsoluteError()


def sr_teacher(seed=0):
    """A tiny EDSR whose output differs from bilinear upsampling (its last conv is random
    instead of zero), so that there is something to learn."""
    keras.utils.set_random_seed(seed)
    teacher = sr.edsr(scale=2, filters=8, blocks=1, name="teacher")
    conv = teacher.get_layer("reconstruct")
    kernel, *rest = conv.get_weights()
    conv.set_weights([np.random.default_rng(seed).normal(0, 0.1, kernel.shape), *rest])
    return teacher


def compile_(df, lr=3e-3):
    df.compile(optimizer=keras.optimizers.Adam(lr),
               generator_optimizer=keras.optimizers.Adam(1e-3), loss=MAE)
    return df


def real_lr(n=4, side=16, seed=0):
    """Smooth LR 'images' unlike the generator's: low-frequency sinusoids on [0, 255]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    out = [127.5 + 100 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy
                                             + rng.uniform()))
           for _ in range(n)]
    return np.stack(out)[..., None].astype("float32")


def test_student_learns_the_teacher_without_images(tmp_path):
    teacher = sr_teacher()
    keras.utils.set_random_seed(1)
    student = sr.fsrcnn(scale=2, name="student")
    # This teacher is untrained: its BN statistics describe no data, so they are not matched.
    df = compile_(DataFreeSR(teacher, student, patch_size=12, batch_size=8, generator_width=8,
                             bn_weight=0.0))
    assert df.scale == 2 and df.image_shape == (12, 12, 1)
    lr = real_lr()
    before = float(np.mean(np.abs(student(lr) - teacher(lr))))
    history = df.fit(epochs=4, steps_per_epoch=25, validation_data=(lr, teacher(lr).numpy()),
                     verbose=0).history
    assert {"loss", "reconstruction_kd_loss", "generator_loss", "reconstruction_loss",
            "adversarial_loss", "val_student_loss"} <= set(history)
    # The student matches the teacher on the generated patches, and, trained on those only,
    # moves toward it on images of another kind and another size.
    kd = history["reconstruction_kd_loss"]
    assert kd[-1] < 0.6 * kd[0], kd
    after = float(np.mean(np.abs(student(lr) - teacher(lr))))
    assert after < 0.9 * before, (before, after)
    assert history["val_student_loss"][-1] == pytest.approx(after, rel=1e-3)

    assert DataFreeSR(teacher, student, patch_size=12).bn_weight == 30.0  # default: it has BN
    patches = np.asarray(df.generate(4))
    assert patches.shape == (4, 12, 12, 1) and patches.min() >= 0 and patches.max() <= 255
    df.save(tmp_path / "df.keras")
    loaded = keras.models.load_model(tmp_path / "df.keras")
    assert isinstance(loaded, DataFreeSR) and loaded.patch_size == 12
    np.testing.assert_allclose(loaded.predict(lr, verbose=0), df.predict(lr, verbose=0),
                               atol=1e-3)


def test_generator_losses_against_a_float64_reference():
    """With a generator that ignores z (a learned constant patch) the step's losses are
    known: reconstruction = mean |down(T(x)) - x|, adversarial = mean |T(x) - S(x)|, the
    generator total = w_r * reconstruction - w_a * adversarial."""
    teacher = sr_teacher()
    student = sr.fsrcnn(scale=2, width=0.5, name="student")
    patch = real_lr(1, 12)[0]
    z = keras.Input((100,))
    h = keras.layers.Dense(12 * 12, kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(patch.ravel()))(z)
    generator = keras.Model(z, keras.layers.Reshape((12, 12, 1))(h))
    df = DataFreeSR(teacher, student, generator=generator, patch_size=12, batch_size=2,
                    reconstruction_weight=0.5, adversarial_weight=2.0, bn_weight=0.0)
    step = df.learn(None, None, None, None, training=True)
    x = np.repeat(patch[None], 2, axis=0).astype("float64")
    t = teacher(x.astype("float32")).numpy().astype("float64")
    s = student(x.astype("float32"), training=True).numpy().astype("float64")
    down = tf.image.resize(t, (12, 12), "bicubic", antialias=True).numpy()
    rec, adv = np.mean(np.abs(down - x)), np.mean(np.abs(t - s))
    got = {k: (float(v.value), v.weight, v.optimizer) for k, v in step.losses.items()}
    assert got["reconstruction_loss"][0] == pytest.approx(rec, rel=1e-4)
    assert got["adversarial_loss"][0] == pytest.approx(adv, rel=1e-4)
    assert got["reconstruction_kd_loss"][0] == pytest.approx(adv, rel=1e-4)
    assert {k: v[1:] for k, v in got.items()} == {
        "reconstruction_loss": (0.5, "generator_optimizer"),
        "adversarial_loss": (-2.0, "generator_optimizer"),
        "reconstruction_kd_loss": (1.0, "optimizer")}


def test_bad_pairs_name_the_fix():
    teacher = sr_teacher()
    with pytest.raises(ValueError, match="not an image.*tfkd.schemes.DataFree"):
        DataFreeSR(convnet(width=4, name="classifier"), convnet(width=4, name="s"))
    with pytest.raises(ValueError, match="x2 and the student x4"):
        DataFreeSR(teacher, sr.fsrcnn(scale=4, width=0.5), patch_size=12)
    with pytest.raises(ValueError, match="no BatchNormalization.*bn_weight=0"):
        DataFreeSR(_no_bn_sr(), sr.fsrcnn(scale=2, width=0.5), bn_weight=1.0)
    assert DataFreeSR(_no_bn_sr(), sr.fsrcnn(scale=2, width=0.5)).bn_weight == 0.0


def _no_bn_sr():
    inputs = keras.Input((None, None, 1))
    up = keras.layers.UpSampling2D(2, interpolation="bilinear")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(up), name="plain")
