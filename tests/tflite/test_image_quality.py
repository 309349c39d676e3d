"""tfkd.tflite image quality: PSNR / SSIM as SR papers score, bicubic row, tiled inference."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfkd.tflite as tfl  # noqa: E402
from shared_paths import SHARED_DATA  # noqa: E402
from tfkd.tflite.errors import InputDtypeError, RepresentativeDataError, TFLiteError  # noqa
from tfkd.tflite.evaluate import Runner  # noqa: E402
from tfkd.tflite.image_quality import tiles  # noqa: E402

SET5 = SHARED_DATA / "sr" / "Set5"
TILE, OVERLAP = 16, 4  # the fixed-size file's input; the overlap super_resolve picks for it


def bt601(rgb):
    """BT.601 luma (MATLAB's rgb2ycbcr) of (..., 3) pixels, float64, written out here."""
    rgb = np.asarray(rgb, np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def reference_psnr(hr, sr, shave, y=True):
    """10 log10(255^2 / MSE) in float64 on clipped, rounded SR, Y channel, shaved border."""
    sr = np.clip(np.round(np.asarray(sr, np.float64)), 0, 255)
    hr = np.asarray(hr, np.float64)
    if y:
        hr, sr = bt601(hr), bt601(sr)
    d = (hr - sr)[shave:-shave, shave:-shave]
    return 10 * np.log10(255.0 ** 2 / np.mean(d ** 2))


@pytest.fixture(scope="module")
def set5_rgb():
    if not SET5.is_dir():
        pytest.skip(f"{SET5} not found (CI lays ../shared/data beside the repo)")
    from tfkd.data.super_resolution import load_sr_folder

    return load_sr_folder(SET5, scale=2, mode="rgb")


@pytest.fixture(scope="module")
def set5_y_pairs():
    if not SET5.is_dir():
        pytest.skip(f"{SET5} not found (CI lays ../shared/data beside the repo)")
    from tfkd.data.super_resolution import sr_pairs

    return sr_pairs(SET5, 2, mode="y")


# -- scores -----------------------------------------------------------------------------------
def test_psnr_matches_a_float64_reference_on_shaved_y(set5_rgb):
    rng = np.random.default_rng(0)
    hrs = [set5_rgb[1], set5_rgb[3]]  # bird, head
    # Noise plus an offset (so rounding matters) and a bright patch past 255 (so clipping does).
    srs = [h + rng.normal(0.3, 6.0, h.shape) for h in hrs]
    srs[0][:40, :40] += 300
    s = tfl.sr_scores(hrs, srs, scale=2)
    expected = [reference_psnr(h, x, 2) for h, x in zip(hrs, srs)]
    assert [p["psnr"] for p in s["per_image"]] == pytest.approx(expected, abs=1e-3)
    assert s["psnr"] == pytest.approx(np.mean(expected), abs=1e-3)
    assert 25 < s["psnr"] < 40
    # The same without the Y conversion: every RGB channel counts.
    rgb = tfl.sr_scores(hrs, srs, scale=2, y_channel=False)
    assert [p["psnr"] for p in rgb["per_image"]] == pytest.approx(
        [reference_psnr(h, x, 2, y=False) for h, x in zip(hrs, srs)], abs=1e-3)
    # A Y-channel output against RGB HR images: the HR side is converted.
    y_srs = [bt601(np.clip(np.round(x), 0, 255))[..., None] for x in srs]
    mixed = tfl.sr_scores(hrs, y_srs, scale=2)
    assert mixed["psnr"] == pytest.approx(np.mean(
        [10 * np.log10(255 ** 2 / np.mean(((bt601(h) - np.round(y[..., 0]))[2:-2, 2:-2]) ** 2))
         for h, y in zip(hrs, y_srs)]), abs=1e-3)


def test_ssim_identical_is_one_and_noisy_matches_tf_image_ssim(set5_rgb):
    hr = set5_rgb[2]  # butterfly 256x256
    same = tfl.sr_scores([hr], [hr], scale=3)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["psnr"] == np.inf
    noisy = np.round(hr + np.random.default_rng(1).normal(0, 12, hr.shape))
    s = tfl.sr_scores([hr], [noisy], scale=3)
    y_hr = tfl.rgb_to_y(hr)[3:-3, 3:-3]
    y_sr = tfl.rgb_to_y(np.clip(noisy, 0, 255).astype("float32"))[3:-3, 3:-3]
    direct = float(tf.image.ssim(y_hr, y_sr, max_val=255.0))
    assert s["ssim"] == pytest.approx(direct, abs=1e-6)
    assert 0.3 < s["ssim"] < 0.99


def test_score_errors(set5_rgb):
    hr = set5_rgb[1]
    with pytest.raises(RepresentativeDataError, match="must match pixel for pixel.*Crop"):
        tfl.sr_scores([hr], [hr[:-2]], scale=2)
    with pytest.raises(RepresentativeDataError, match="2 HR images but 1 SR images"):
        tfl.sr_scores([hr, hr], [hr], scale=2)
    with pytest.raises(TFLiteError, match="scale must be an integer >= 1"):
        tfl.sr_scores([hr], [hr], scale=0)
    with pytest.raises(RepresentativeDataError, match="less than SSIM's 11x11 window"):
        tfl.sr_scores([hr[:14, :14]], [hr[:14, :14]], scale=2)


def test_bicubic_set5_x2_is_the_published_row(set5_y_pairs):
    # Papers' bicubic Set5 x2 (Y, 2-pixel shave): 33.66 dB / 0.9299. Measured here with
    # tf.image.resize (antialiased bicubic down, bicubic up): 33.663 dB / 0.9300; a wrong Y
    # (full-range), no shave or no antialias each moves it by far more than 0.1 dB.
    hrs = [hr for _, hr in set5_y_pairs]
    ups = [tfl.bicubic_upscale(lr, 2) for lr, _ in set5_y_pairs]
    assert all(u.shape == h.shape for u, h in zip(ups, hrs))
    s = tfl.sr_scores(hrs, ups, scale=2)
    assert s["psnr"] == pytest.approx(33.66, abs=0.1)
    assert s["ssim"] == pytest.approx(0.9299, abs=0.002)
    # baby, bird, butterfly, head, woman; the butterfly is the hard one (27.4 dB).
    assert [round(p["psnr"], 1) for p in s["per_image"]] == [37.1, 36.8, 27.4, 34.9, 32.1]


# -- tiled inference ------------------------------------------------------------------------------
def test_tiles_stitch_seamlessly():
    # A model with no receptive field beyond its pixel (nearest 2x): tiling must give exactly
    # the whole-image output, for a size that no tile count divides and non-square tiles.
    image = np.random.default_rng(0).random((37, 23, 2)).astype("float32")

    def nearest(x):
        return np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)

    for overlap in (0, 2, 3):
        np.testing.assert_array_equal(tiles(nearest, image, (8, 12), overlap), nearest(image))
    with pytest.raises(TFLiteError, match="overlap=4 leaves nothing of a 8x12 tile"):
        tiles(nearest, image, (8, 12), 4)


@pytest.fixture(scope="module")
def sr_files(tmp_path_factory, set5_y_pairs):
    """A tiny 2x SR net (conv, transposed conv, conv; pixels in [0, 255]) and four files: its
    float32 and int8 conversions with dynamic spatial dims and with a fixed 16x16 input.

    Conv2DTranspose upsamples: a bilinear UpSampling2D on dynamic dims fails to export in
    Keras 3.15 (its resize branches on a symbolic size), so its model cannot be converted."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 1), name="lr")
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(1, 3, padding="same")(x)
    model = keras.Model(inp, keras.layers.Rescaling(255)(x), name="tiny_sr")
    fixed_in = keras.Input((TILE, TILE, 1), name="lr")
    fixed = keras.Model(fixed_in, model(fixed_in), name="tiny_sr_16")
    rng = np.random.default_rng(0)
    calib = []
    for i in range(32):  # 16x16 LR crops of Set5
        lr = set5_y_pairs[i % 5][0]
        r, c = rng.integers(0, lr.shape[0] - TILE), rng.integers(0, lr.shape[1] - TILE)
        calib.append(lr[r:r + TILE, c:c + TILE])
    calib = np.stack(calib)
    folder = tmp_path_factory.mktemp("sr")
    files = {name: folder / f"{name}.tflite" for name in ("dyn_f32", "dyn_int8", "fixed_f32",
                                                           "fixed_uint8")}
    tfl.convert(model, files["dyn_f32"])
    tfl.convert(fixed, files["fixed_f32"])
    tfl.convert(model, files["dyn_int8"], quantization="int8", representative_data=calib,
                input_type="int8")
    # uint8 in and out, as target="coral" writes for the Edge TPU.
    tfl.convert(fixed, files["fixed_uint8"], quantization="int8", representative_data=calib,
                input_type="uint8")
    return model, files


def _reflect_reference(model, lr, pad=OVERLAP):
    """The Keras model on the image padded by reflection, cropped back: what tiling with
    reflected borders computes when the overlap covers the receptive field (3 LR pixels
    here: conv 3x3, transposed conv 4x4 / 2, conv 3x3)."""
    padded = np.pad(lr, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return model(padded[None])[0].numpy()[2 * pad:-2 * pad, 2 * pad:-2 * pad]


def test_tiled_and_dynamic_tflite_match_keras(sr_files, set5_y_pairs):
    model, files = sr_files
    lr = set5_y_pairs[2][0]  # butterfly: 128x128 LR
    whole = model(lr[None])[0].numpy()
    reflected = _reflect_reference(model, lr)
    inner = (slice(2 * OVERLAP, -2 * OVERLAP),) * 2  # HR pixels whose context is all image
    assert whole.shape == (256, 256, 1) and whole.std() > 1  # a non-trivial output

    dyn = Runner(files["dyn_f32"])
    assert list(dyn.input["shape_signature"]) == [1, -1, -1, 1]
    out = tfl.super_resolve(dyn, lr)  # the input resized to the image, one run
    np.testing.assert_allclose(out, whole, atol=1e-3)

    fixed = Runner(files["fixed_f32"])
    assert list(fixed.input["shape_signature"]) == [1, TILE, TILE, 1]
    tiled = tfl.super_resolve(fixed, lr)  # 16x16 tiles, overlap 4
    np.testing.assert_allclose(tiled, reflected, atol=1e-3)
    np.testing.assert_allclose(tiled[inner], whole[inner], atol=1e-3)
    # The Keras model tiled the same way: the same stitching, through another runner.
    np.testing.assert_allclose(tfl.super_resolve(model, lr, tile=TILE), reflected, atol=1e-3)

    # int8: within a few LSB of the float model (measured: max 5.8, mean 0.9 LSB).
    for name, reference in (("dyn_int8", whole), ("fixed_uint8", reflected)):
        runner = Runner(files[name])
        lsb = runner.output["quantization"][0]
        assert np.dtype(runner.input["dtype"]) == (np.int8 if name == "dyn_int8" else np.uint8)
        err = np.abs(tfl.super_resolve(runner, lr) - reference) / lsb
        assert err.max() <= 8 and err.mean() <= 1.5, (name, err.max(), err.mean())


def test_super_resolve_errors(sr_files, set5_y_pairs):
    _, files = sr_files
    lr = set5_y_pairs[3][0]
    with pytest.raises(InputDtypeError, match="takes 1-channel images but the LR image has 3"):
        tfl.super_resolve(files["dyn_f32"], np.repeat(lr, 3, axis=-1))
    with pytest.raises(TFLiteError, match=r"tile=\(8, 8\) but the model's input is 16x16"):
        tfl.super_resolve(files["fixed_f32"], lr, tile=8)
    with pytest.raises(TFLiteError, match="overlap=8 leaves nothing of a 16x16 tile"):
        tfl.super_resolve(files["fixed_f32"], lr, overlap=8)


def test_evaluate_psnr_ssim_is_sr_scores_of_super_resolve(sr_files, set5_y_pairs):
    _, files = sr_files
    pairs = set5_y_pairs[2:4]  # butterfly, head
    hrs = [hr for _, hr in pairs]
    for name in ("fixed_uint8", "dyn_f32"):
        r = tfl.evaluate(files[name], pairs, metrics=("psnr", "ssim"), scale=2)
        s = tfl.sr_scores(hrs, [tfl.super_resolve(files[name], lr) for lr, _ in pairs], 2)
        assert (r["psnr"], r["ssim"], r["num_samples"]) == (s["psnr"], s["ssim"], 2)
        assert np.isfinite(r["psnr"]) and -1 < r["ssim"] < 1
    # The scale is read from the pairs when not given; stacks of equal-size pairs work too.
    assert tfl.evaluate(files["dyn_f32"], pairs, metrics=("psnr",))["psnr"] == r["psnr"]
    stack = (np.stack([lr[:64, :64] for lr, _ in pairs]),
             np.stack([hr[:128, :128] for _, hr in pairs]))
    r = tfl.evaluate(files["dyn_f32"], stack, metrics=("ssim",), scale=2)
    s = tfl.sr_scores(list(stack[1]), [tfl.super_resolve(files["dyn_f32"], x)
                                       for x in stack[0]], 2)
    assert r["ssim"] == s["ssim"] and r["num_samples"] == 2


def test_evaluate_refuses_unknown_combinations(sr_files, set5_y_pairs, tmp_path):
    import keras

    _, files = sr_files
    pairs = set5_y_pairs[3:4]
    with pytest.raises(TFLiteError, match=r"'psnr' is an image-quality metric.*\['accuracy'\]"
                                          ".*in a call of their own"):
        tfl.evaluate(files["dyn_f32"], pairs, metrics=("psnr", "accuracy"))
    with pytest.raises(RepresentativeDataError, match="Pair 0: the HR image is 280x280 but 3 x"):
        tfl.evaluate(files["dyn_f32"], pairs, metrics=("psnr",), scale=3)
    with pytest.raises(TFLiteError, match="scale=, y_channel= and overlap= apply to super-res"):
        tfl.evaluate(files["dyn_f32"], pairs, scale=2)
    with pytest.raises(TFLiteError, match="ignore_class= and num_classes= apply to the dense"):
        tfl.evaluate(files["dyn_f32"], pairs, metrics=("psnr",), ignore_class=0)
    classifier = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(3)])
    tfl.convert(classifier, tmp_path / "cls.tflite")
    with pytest.raises(TFLiteError, match="'psnr' scores images: output 0 of this model has "
                                          r"shape \[3\]"):
        tfl.evaluate(tmp_path / "cls.tflite", [(np.zeros((8, 8, 1)), np.zeros((16, 16, 1)))],
                     metrics=("psnr",))
