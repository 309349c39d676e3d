"""Super-resolution students and teachers: shapes at any size, the bilinear start, bad input."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from tfkd.students import super_resolution as sr


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_a_new_student_is_bilinear_upsampling_of_any_size(scale):
    x = np.random.default_rng(scale).uniform(0, 255, (2, 13, 9, 1)).astype("float32")
    model = sr.fsrcnn(scale=scale)
    out = np.asarray(model(x))
    assert out.shape == (2, 13 * scale, 9 * scale, 1)
    # The reconstruct conv starts at zero, so the output is the skip alone: bilinear
    # upsampling (tf.image.resize's half-pixel centres) away from the zero-padded border.
    ref = tf.image.resize(x, (13 * scale, 9 * scale), "bilinear").numpy()
    b = 2 * scale
    np.testing.assert_allclose(out[:, b:-b, b:-b], ref[:, b:-b, b:-b], atol=2e-3)


def test_teacher_and_student_tap_lr_maps_of_the_same_size():
    import keras

    student, teacher = sr.fsrcnn(scale=2), sr.edsr(scale=2, filters=16, blocks=2)
    x = np.zeros((1, 10, 12, 1), "float32")
    taps = lambda m, names: keras.Model(m.input, [m.get_layer(n).output for n in names])
    s_feats = taps(student, ["features", "mapping"])(x)
    t_feats = taps(teacher, ["features", "body"])(x)
    assert [tuple(f.shape[1:3]) for f in s_feats + t_feats] == [(10, 12)] * 4
    assert teacher.count_params() > 4 * sr.fsrcnn(scale=2, width=0.5).count_params()


@pytest.mark.parametrize("build, kwargs, message", [
    (sr.fsrcnn, dict(scale=5), "`scale` must be one of"),
    (sr.fsrcnn, dict(input_shape=(None, None, 2)), "1 channel \\(Y\\) or 3"),
    (sr.fsrcnn, dict(mapping_layers=0), "`mapping_layers` must be an integer >= 1"),
    (sr.edsr, dict(blocks=0), "`blocks` must be an integer >= 1"),
    (sr.fsrcnn, dict(upsampler="nearest"), "method='nearest' is not one of"),
])
def test_bad_arguments_name_the_fix(build, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


def test_docstring_examples_run():
    import doctest

    from tfkd.knowledge import restoration
    from tfkd.students import upsampling

    for module in (sr, upsampling, restoration):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
