"""tfkd.data.super_resolution: HR folders (Set5, Set14), bicubic LR images, the patch pipeline."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from shared_paths import SHARED_DATA  # noqa: E402
from tfkd.data import DataError  # noqa: E402
from tfkd.data.super_resolution import (SRDataError, downscale, load_sr_folder,  # noqa: E402
                                        rgb_to_y, sr_dataset, sr_pairs)

SR = SHARED_DATA / "sr"
# Set5 in file-name order, (H, W) of the full-size originals (the data README gives W x H).
SET5_SIZES = {"baby": (512, 512), "bird": (288, 288), "butterfly": (256, 256),
              "head": (280, 280), "woman": (344, 228)}


@pytest.fixture(scope="module")
def set5_dir():
    if not (SR / "Set5").is_dir():
        pytest.skip(f"{SR / 'Set5'} not found (CI lays ../shared/data beside the repo)")
    return SR / "Set5"


@pytest.fixture(scope="module")
def set5_y(set5_dir):
    return load_sr_folder(set5_dir, mode="y")


@pytest.fixture(scope="module")
def small_rgb(set5_dir):
    """Set5's three smallest images in RGB, mod-2 cropped: bird, butterfly, head."""
    images = load_sr_folder(set5_dir, scale=2, mode="rgb")
    return [images[1], images[2], images[3]]


def bt601(r, g, b):
    """The BT.601 / MATLAB rgb2ycbcr luma, in float64."""
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


# -- rgb_to_y -----------------------------------------------------------------------------
def test_y_of_known_colours_is_the_bt601_formula():
    colours = np.array([[10, 200, 30], [255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8)
    expected = bt601(*colours.astype(np.float64).T)
    y = rgb_to_y(colours)
    assert y.shape == (4, 1) and y.dtype == np.float32
    np.testing.assert_allclose(y[:, 0], expected, atol=1e-4)
    # Studio swing: black is 16 and white 235, not 0 and 255 (tf.image.rgb_to_yuv's range).
    assert y[2, 0] == pytest.approx(16.0) and y[1, 0] == pytest.approx(235.0)
    # float64 in, float64 out, to double precision; a tensor gives the same numbers.
    np.testing.assert_allclose(rgb_to_y(colours.astype(np.float64))[:, 0], expected,
                               rtol=1e-13)
    np.testing.assert_allclose(rgb_to_y(tf.constant(colours)).numpy()[:, 0], expected,
                               atol=1e-4)


def test_y_refuses_non_rgb():
    with pytest.raises(ValueError, match=r"RGB pixels \(\.\.\., 3\)"):
        rgb_to_y(np.zeros((4, 4, 1)))


# -- load_sr_folder ---------------------------------------------------------------------------
def test_set5_loads_sorted_full_size_in_y(set5_y, set5_dir):
    assert [x.shape for x in set5_y] == [s + (1,) for s in SET5_SIZES.values()]
    assert all(x.dtype == np.float32 for x in set5_y)
    # The Y of the decoded RGB file (PIL, an independent decoder), pixel for pixel.
    rgb = np.asarray(Image.open(set5_dir / "bird.png").convert("RGB"), np.float64)
    np.testing.assert_allclose(set5_y[1][..., 0], bt601(rgb[..., 0], rgb[..., 1], rgb[..., 2]),
                               atol=1e-3)


def test_mod_crop_is_top_left(set5_y, set5_dir):
    cropped = load_sr_folder(set5_dir, scale=3, mode="y")
    for full, crop in zip(set5_y, cropped):
        h, w = full.shape[:2]
        assert crop.shape[:2] == (h - h % 3, w - w % 3)
        np.testing.assert_array_equal(crop, full[:crop.shape[0], :crop.shape[1]])
    assert cropped[4].shape == (342, 228, 1)  # woman: 344 rows -> 342, 228 columns kept


def test_grayscale_file_becomes_rgb(tmp_path):
    bridge = SR / "Set14" / "bridge.png"
    if not bridge.exists():
        pytest.skip(f"{bridge} not found")
    assert Image.open(bridge).mode == "L"  # the premise: Set14's bridge is grayscale
    shutil.copy(bridge, tmp_path / "bridge.png")
    gray = np.asarray(Image.open(bridge), np.float64)
    rgb = load_sr_folder(tmp_path, mode="rgb")[0]
    assert rgb.shape == gray.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)
    # R = G = B = v gives Y = 16 + 219 v / 255 (the three weights sum to 219).
    y = load_sr_folder(tmp_path, mode="y")[0]
    np.testing.assert_allclose(y[..., 0], 16 + 219 * gray / 255, atol=1e-3)


def test_folder_errors_name_the_problem_and_the_fix(tmp_path, set5_dir):
    with pytest.raises(SRDataError, match="No images .* in .*point to the folder"):
        load_sr_folder(tmp_path)
    (tmp_path / "Set5").mkdir()
    with pytest.raises(SRDataError, match=r"sub-folders \['Set5'\]: pass one of them"):
        load_sr_folder(tmp_path)
    with pytest.raises(SRDataError, match="is not a folder"):
        load_sr_folder(tmp_path / "missing")
    (tmp_path / "Set5" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(SRDataError, match=r"Cannot decode the image '.*broken\.png'.*re-save"):
        load_sr_folder(tmp_path / "Set5")
    with pytest.raises(SRDataError, match="mode='ycbcr' .* use 'y' .* or 'rgb'"):
        load_sr_folder(set5_dir, mode="ycbcr")
    for scale in (1, 2.0, True, "2"):
        with pytest.raises(SRDataError, match="scale must be an integer >= 2"):
            load_sr_folder(set5_dir, scale=scale)
    # The loader's errors are tfkd.data's DataError (ValueError), as the other loaders'.
    assert issubclass(SRDataError, DataError) and issubclass(SRDataError, ValueError)


# -- downscale / sr_pairs -----------------------------------------------------------------------
def test_downscale_is_tf_bicubic_antialias_rounded(small_rgb):
    hr = small_rgb[0]  # bird, 288 x 288 RGB
    for scale in (2, 3, 4):
        h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
        crop = hr[:h, :w]
        lr = downscale(crop, scale)
        ref = tf.image.resize(crop, (h // scale, w // scale), "bicubic", antialias=True).numpy()
        assert lr.shape == (h // scale, w // scale, 3) and lr.dtype == np.float32
        np.testing.assert_array_equal(lr, np.round(np.clip(ref, 0, 255)))
    # Bicubic overshoots past [0, 255] on this image: the clipping is not idle.
    ref = tf.image.resize(hr, (144, 144), "bicubic", antialias=True).numpy()
    assert ref.min() < 0 or ref.max() > 255
    # A tensor in, a tensor out, the same numbers.
    np.testing.assert_array_equal(downscale(tf.constant(hr), 2).numpy(), downscale(hr, 2))


def test_downscale_refuses_a_size_the_scale_does_not_divide():
    with pytest.raises(SRDataError, match=r"7x8 cannot be downscaled by 2: crop .*-> 6x8"):
        downscale(np.zeros((7, 8, 1)), 2)


def test_sr_pairs_of_a_folder_and_of_arrays(set5_dir, set5_y):
    pairs = sr_pairs(set5_dir, 4, mode="y")
    assert len(pairs) == 5
    for (lr, hr), full in zip(pairs, set5_y):
        h, w = full.shape[0] // 4 * 4, full.shape[1] // 4 * 4
        assert hr.shape == (h, w, 1) and lr.shape == (h // 4, w // 4, 1)
        np.testing.assert_array_equal(lr, downscale(hr, 4))
    head = set5_y[3][:279, :279]  # a multiple of 3
    assert sr_pairs([head], 3)[0][0].shape == (93, 93, 1)
    with pytest.raises(SRDataError, match=r"hr_images\[1\]: An HR image of 344x228 .* by 3.*"
                                          r"-> 342x228"):
        sr_pairs([head, set5_y[4]], 3)  # uncropped: woman's 344 rows are not a multiple of 3


# -- sr_dataset ---------------------------------------------------------------------------------
def _epoch(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_dataset_batches_are_crops_and_their_downscales(small_rgb):
    ds = sr_dataset(small_rgb, 2, patch_size=48, batch_size=4, augment=False, shuffle=False,
                    seed=0, patches_per_image=3)
    batches = _epoch(ds)
    assert [len(x) for x, _ in batches] == [4, 4, 1]  # 3 images x 3 patches
    for lr, hr in batches:
        assert lr.shape[1:] == (24, 24, 3) and hr.shape[1:] == (48, 48, 3)
        assert lr.dtype == np.float32 and hr.dtype == np.float32
        np.testing.assert_array_equal(lr, downscale(hr, 2))
    # Unshuffled, patch k comes from image k % 3; unaugmented, it is a plain crop of it.
    patches = np.concatenate([hr for _, hr in batches])
    for k, patch in enumerate(patches):
        image = small_rgb[k % 3]
        windows = np.lib.stride_tricks.sliding_window_view(image[..., 0], (48, 48))
        rows, cols = np.nonzero(np.all(windows[:, :, 0, :] == patch[0, :, 0], axis=-1))
        assert any(np.array_equal(image[r:r + 48, c:c + 48], patch) for r, c in zip(rows, cols))


def test_augmentation_gives_all_eight_symmetries():
    # Every pixel of this image is unique, so a patch's corners tell which flip / rotation
    # of its crop it is.
    image = np.arange(40 * 40, dtype=np.float32).reshape(40, 40, 1)

    def orientations(augment):
        ds = sr_dataset([image], 2, patch_size=8, batch_size=64, augment=augment, seed=3,
                        patches_per_image=128)
        found = set()
        for _, hr in ds:
            for p in hr.numpy()[..., 0]:
                d_row, d_col = p[0, 1] - p[0, 0], p[1, 0] - p[0, 0]  # steps along row / column
                found.add((d_row, d_col))
        return found

    # (step to the right, step down) in the source image: 1 / 40 for the identity.
    assert orientations(False) == {(1, 40)}
    assert orientations(True) == {(1, 40), (-1, 40), (1, -40), (-1, -40),
                                  (40, 1), (-40, 1), (40, -1), (-40, -1)}


def test_dataset_is_deterministic_with_a_seed(small_rgb):
    def make(seed):
        return sr_dataset(small_rgb, 2, patch_size=32, batch_size=4, seed=seed,
                          patches_per_image=2)

    ds_a, ds_b = make(0), make(0)
    first_a, second_a = _epoch(ds_a), _epoch(ds_a)
    first_b, second_b = _epoch(ds_b), _epoch(ds_b)
    for (xa, ya), (xb, yb) in zip(first_a + second_a, first_b + second_b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # New crops every epoch, and another seed gives other crops.
    assert not np.array_equal(first_a[0][1], second_a[0][1])
    assert not np.array_equal(_epoch(make(1))[0][1], first_a[0][1])


def test_dataset_of_a_folder_path(tmp_path, set5_dir):
    for name in ("bird.png", "head.png"):
        shutil.copy(set5_dir / name, tmp_path / name)
    from_path = _epoch(sr_dataset(tmp_path, 3, patch_size=36, seed=5, patches_per_image=2))
    from_arrays = _epoch(sr_dataset(load_sr_folder(tmp_path, mode="y"), 3, patch_size=36,
                                    seed=5, patches_per_image=2))
    assert from_path[0][0].shape == (4, 12, 12, 1)
    for (xa, ya), (xb, yb) in zip(from_path, from_arrays):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(SRDataError, match=r"bird\.png \(288x288\).*patch_size \(at most 279\)"):
        sr_dataset(tmp_path, 3, patch_size=291)


def test_dataset_errors(small_rgb):
    with pytest.raises(SRDataError, match="patch_size=97 is not a multiple of scale=2.*96 or 98"):
        sr_dataset(small_rgb, 2, patch_size=97)
    with pytest.raises(SRDataError, match=r"3 image\(s\) are smaller than patch_size=300: "
                                          r"hr_images\[0\] \(288x288\), hr_images\[1\] "
                                          r"\(256x256\).*smaller patch_size \(at most 256\)"):
        sr_dataset(small_rgb, 2, patch_size=300)
    with pytest.raises(SRDataError, match="scale must be an integer >= 2"):
        sr_dataset(small_rgb, 1)
    with pytest.raises(SRDataError, match="different channel counts"):
        sr_dataset([small_rgb[0], small_rgb[1][..., :1]], 2, patch_size=32)


def test_dataset_feeds_model_fit(small_rgb):
    import keras

    keras.utils.set_random_seed(0)
    y_images = [rgb_to_y(x) for x in small_rgb]
    # Rescaled inside so that Adam's steps are on the scale of the weights: 12 steps are then
    # enough to see the loss fall (checked on 5 seeds: it fell by 2x or more each time).
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                              keras.layers.Conv2DTranspose(1, 2, strides=2),
                              keras.layers.Rescaling(255)])
    model.compile(keras.optimizers.Adam(2e-2), "mse")
    ds = sr_dataset(y_images, 2, patch_size=32, batch_size=4, seed=0, patches_per_image=4)
    losses = model.fit(ds, epochs=3, verbose=0).history["loss"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    # It learns to map x to y: the batches are (LR input, HR target) pairs that line up.
    assert losses[-1] < 0.8 * losses[0]


def test_docstring_example_runs():
    import doctest

    from tfkd.data import super_resolution

    result = doctest.testmod(super_resolution, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
