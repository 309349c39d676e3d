"""tfkd.data segmentation: CamVid and folder loaders, mask checks, the mask-aware pipeline."""
import json

import keras
import numpy as np
import pytest
from PIL import Image

import tfkd
from tfkd.data import DataError
from shared_paths import SHARED_DATA

# Class i is drawn in PALETTE[i] (no colour is all zero, so an all-zero pixel is padding).
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30],
                    [30, 200, 200]], "float32")


def blocks(n=6, h=24, w=32, seed=0, classes=4):
    """Masks of random rectangles of class ids 0..classes-1 and images whose colour is the class."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, h, w), "uint8")
    for i in range(n):
        y[i] = rng.integers(classes)
        for _ in range(4):
            r, c = rng.integers(0, h - 6), rng.integers(0, w - 6)
            y[i, r:r + rng.integers(4, 12), c:c + rng.integers(4, 14)] = rng.integers(classes)
    return PALETTE[y].astype("uint8"), y


def class_of_colour(images):
    """Nearest palette class of each pixel, and its distance to that colour."""
    d = np.linalg.norm(images[..., None, :] - PALETTE, axis=-1)
    return d.argmin(-1), d.min(-1)


@pytest.fixture(scope="module")
def camvid():
    path = SHARED_DATA / "camvid.npz"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared/data beside the repo.")
    return tfkd.data.load_segmentation_npz(path)


# -- loaders ----------------------------------------------------------------------------------
def test_camvid_has_11_classes_ignore_11_and_colours(camvid):
    with np.load(SHARED_DATA / "camvid.npz") as raw:
        colors, names, y_val = raw["class_colors"], list(raw["class_names"]), raw["y_val"]
    assert camvid.num_classes == 11 and camvid.ignore_label == 11
    assert camvid.class_names == names[:11] and "Unlabelled" not in camvid.class_names
    np.testing.assert_array_equal(camvid.class_colors, colors[:11])
    np.testing.assert_array_equal(camvid.ignore_color, colors[11])
    x, y = camvid.train
    assert x.shape == (367, 90, 120, 3) and y.shape == (367, 90, 120)
    assert len(camvid.val[0]) == 101 and len(camvid.test[0]) == 233
    np.testing.assert_array_equal(camvid.val[1], y_val)  # ids unchanged: void is the last id
    assert set(np.unique(y).tolist()) == set(range(12))
    assert "11 classes, ignore label 11" in camvid.describe()
    small = camvid.subset(max_train=5, max_test=3)
    assert small.train[1].shape == (5, 90, 120) and small.ignore_label == 11


def test_npz_ignore_none_keeps_every_id_and_void_in_the_middle_is_remapped(tmp_path):
    x = np.zeros((2, 2, 3, 3), "uint8")
    y = np.array([[[0, 1, 2], [2, 1, 0]]] * 2, "uint8")
    path = tmp_path / "seg.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y,
             class_names=np.array(["void", "road", "car"]),
             class_colors=np.array([[0, 0, 0], [9, 9, 9], [5, 5, 5]], "uint8"))
    all_ids = tfkd.data.load_segmentation_npz(path, ignore_label=None)
    assert all_ids.num_classes == 3 and all_ids.ignore_label is None
    auto = tfkd.data.load_segmentation_npz(path)
    assert auto.class_names == ["road", "car"] and auto.ignore_label == 255
    assert auto.train[1][0].tolist() == [[255, 0, 1], [1, 0, 255]]
    assert auto.class_colors.tolist() == [[9, 9, 9], [5, 5, 5]]
    # No names: 255 in the masks is the conventional ignore label.
    y255 = np.where(y == 0, 255, y).astype("uint8")
    np.savez(path, x_train=x, y_train=y255, x_test=x, y_test=y255)
    plain = tfkd.data.load_segmentation_npz(path)
    assert plain.ignore_label == 255 and plain.num_classes == 3


def write_folder(root, x, y, mask_suffix=""):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (img, mask) in enumerate(zip(x, y)):
        Image.fromarray(img).save(root / "images" / f"f{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"f{i:02d}{mask_suffix}.png")


def test_folder_loads_pairs_splits_and_resizes_masks_by_nearest(tmp_path):
    x, y = blocks(n=5)
    y[:, 0, 0] = 255  # an ignored pixel
    write_folder(tmp_path / "ds", x, y, mask_suffix="_mask")
    (tmp_path / "ds" / "classes.txt").write_text("sky\nroad\ncar\nperson\n")
    splits = tfkd.data.load_segmentation_folder(tmp_path / "ds", test_fraction=0.4, seed=1)
    assert splits.class_names == ["sky", "road", "car", "person"]
    assert splits.ignore_label == 255 and splits.num_classes == 4
    assert len(splits.train[0]) == 3 and len(splits.test[0]) == 2
    for images, masks in (splits.train, splits.test):
        ids, _ = class_of_colour(images.astype("float32"))
        real = masks != 255
        np.testing.assert_array_equal(ids[real], masks[real])  # each mask with its image
    small = tfkd.data.load_segmentation_folder(tmp_path / "ds", image_size=(12, 16))
    assert small.train[0].shape[1:] == (12, 16, 3) and small.train[1].shape[1:] == (12, 16)
    assert set(np.unique(small.train[1])) <= set(np.unique(y))  # nearest: no new ids


def test_folder_train_test_layout_palette_and_colour_masks(tmp_path):
    x, y = blocks(n=4, classes=3)
    for split, sl in (("train", slice(0, 3)), ("test", slice(3, 4))):
        write_folder(tmp_path / "tt" / split, x[sl], y[sl])
    splits = tfkd.data.load_segmentation_folder(tmp_path / "tt", ignore_label=None)
    assert (len(splits.train[0]), len(splits.test[0]), splits.num_classes) == (3, 1, 3)
    np.testing.assert_array_equal(splits.test[1][0], y[3])
    # A palette ('P') PNG stores ids; an RGB mask maps to ids through classes.json colours.
    root = tmp_path / "rgb"
    write_folder(root, x[:2], y[:2])
    palette = Image.fromarray(y[0]).convert("P")
    palette.putpalette(PALETTE.astype("uint8").ravel().tolist())
    palette.save(root / "masks" / "f00.png")
    Image.fromarray(PALETTE[y[1]].astype("uint8")).save(root / "masks" / "f01.png")
    (root / "classes.json").write_text(json.dumps(
        [{"name": n, "color": PALETTE[i].astype(int).tolist()}
         for i, n in enumerate(["a", "b", "c"])]))
    coloured = tfkd.data.load_segmentation_folder(root, test_fraction=0.5, ignore_label=None)
    images = np.concatenate([coloured.train[0], coloured.test[0]])
    masks = np.concatenate([coloured.train[1], coloured.test[1]])
    np.testing.assert_array_equal(masks, class_of_colour(images.astype("float32"))[0])
    assert sorted(int(np.argmax([np.array_equal(m, t) for t in y[:2]])) for m in masks) == [0, 1]
    assert coloured.class_colors.tolist() == PALETTE[:3].astype(int).tolist()


# -- errors -----------------------------------------------------------------------------------
def test_mask_of_another_size_is_named(tmp_path):
    x = np.zeros((3, 8, 8, 3), "uint8")
    with pytest.raises(DataError, match=r"images are 8x8 .* masks are 4x4"):
        tfkd.data.check_masks(x, np.zeros((3, 4, 4), "uint8"), 2)
    with pytest.raises(DataError, match=r"Sample 1: the image is 8x8 .* mask is 8x6"):
        tfkd.data.check_masks(list(x), [np.zeros((8, 8)), np.zeros((8, 6)), np.zeros((8, 8))],
                              2)
    xs, ys = blocks(n=2)
    write_folder(tmp_path / "d", xs, ys)
    Image.fromarray(ys[1][:20]).save(tmp_path / "d" / "masks" / "f01.png")
    with pytest.raises(DataError, match=r"f01\.png' is 20x32 .*f01\.png' is 24x32"):
        tfkd.data.load_segmentation_folder(tmp_path / "d")


def test_ids_outside_the_classes_are_listed_with_the_fix():
    y = np.zeros((4, 5, 5), "uint8")
    y[2, 0, :3] = [7, 9, 255]
    with pytest.raises(DataError) as err:
        tfkd.data.check_masks(None, y, num_classes=5, ignore_label=255)
    msg = str(err.value)
    assert "2 pixels in 1 of 4 masks" in msg and "[7, 9]" in msg and "5 classes" in msg
    assert "sample 2" in msg and "ignore_label=" in msg
    with pytest.raises(DataError, match=r"no ignore label is set: found \[7, 9, 255\]"):
        tfkd.data.check_masks(None, y, num_classes=5)
    assert tfkd.data.check_masks(None, np.minimum(y, 4), 5).max() == 4


def test_unpaired_files_are_named(tmp_path):
    x, y = blocks(n=3)
    write_folder(tmp_path / "d", x, y)
    (tmp_path / "d" / "masks" / "f01.png").rename(tmp_path / "d" / "masks" / "other.png")
    with pytest.raises(DataError) as err:
        tfkd.data.load_segmentation_folder(tmp_path / "d")
    msg = str(err.value)
    assert "1 images without a mask" in msg and "'f01.png'" in msg
    assert "1 masks without an image" in msg and "'other.png'" in msg


def test_rgb_and_non_integer_masks_are_refused(tmp_path):
    x, y = blocks(n=2)
    with pytest.raises(DataError, match="masks must be single-channel class-id"):
        tfkd.data.check_masks(x, PALETTE[y], 4)
    write_folder(tmp_path / "d", x, y)
    Image.fromarray(PALETTE[y[0]].astype("uint8")).save(tmp_path / "d" / "masks" / "f00.png")
    with pytest.raises(DataError, match=r"f00\.png' is a colour \(RGB\) image.*class-id PNG"):
        tfkd.data.load_segmentation_folder(tmp_path / "d")
    soft = y.astype("float32")
    soft[1, 3, 3] = 1.5
    with pytest.raises(DataError, match=r"sample 1 has fractional values like \[1\.5\].*nearest"):
        tfkd.data.check_masks(x, soft, 4)
    assert tfkd.data.check_masks(x, y.astype("float32"), 4).dtype == np.int32  # whole numbers


# -- pipeline ---------------------------------------------------------------------------------
def first_batch(ds):
    return [t.numpy() for t in next(iter(ds))]


def test_keras_layers_move_image_and_mask_together_and_padding_gets_ignore():
    x, y = blocks(n=8, seed=3)
    weight = (y.astype("float32") + 1) / 10  # a per-pixel weight that the mask determines
    aug = keras.Sequential([
        keras.layers.RandomZoom((-0.2, 0.4), interpolation="nearest", fill_mode="constant",
                                seed=1),
        keras.layers.RandomRotation(0.1, interpolation="nearest", fill_mode="constant", seed=2),
        keras.layers.RandomTranslation(0.2, 0.2, interpolation="nearest",
                                       fill_mode="constant", seed=3),
    ])
    ds = tfkd.data.segmentation_dataset(x, y, 8, sample_weight=weight, augment=aug,
                                        ignore_label=255)
    images, masks, weights = first_batch(ds)
    assert masks.dtype == np.int32 and set(np.unique(masks)) <= set(range(4)) | {255}
    padding = np.all(images == 0, axis=-1)
    assert 0.02 < padding.mean() < 0.6  # the transforms did pad
    np.testing.assert_array_equal(masks == 255, padding)  # padding: ignore, not class 0
    ids, dist = class_of_colour(images)
    np.testing.assert_array_equal(ids[~padding], masks[~padding])  # colour and mask agree
    assert dist[~padding].max() == 0
    np.testing.assert_allclose(weights[~padding], (masks[~padding] + 1) / 10)
    assert np.all(weights[padding] == 0)
    assert not np.array_equal(masks, y)  # something moved


def test_default_augmentation_flips_and_scales_with_valid_ids():
    x, y = blocks(n=16, seed=4)
    ds = tfkd.data.segmentation_dataset(x, y, 16, augment=True, seed=0, ignore_label=255,
                                        num_classes=4)
    images, masks = first_batch(ds)
    assert images.shape == (16, 24, 32, 3) and set(np.unique(masks)) <= {0, 1, 2, 3, 255}
    flipped = [np.array_equal(m, y[i][:, ::-1]) for i, m in enumerate(masks)]
    ids, dist = class_of_colour(images)
    flat = (dist < 1.0) & (masks != 255)  # bilinear images: compare inside flat regions
    assert flat.mean() > 0.5
    assert np.mean(ids[flat] == masks[flat]) > 0.99
    changed = sum(not np.array_equal(m, y[i]) for i, m in enumerate(masks))
    assert changed >= 12 and not all(flipped)
    # Without an ignore label the default reflects instead of padding: every pixel is a class.
    no_ignore = tfkd.data.segmentation_dataset(x, y, 16, augment=True, seed=0)
    assert first_batch(no_ignore)[1].max() <= 3


def test_bad_augmentations_are_refused_before_training():
    x, y = blocks(n=4)
    upsizing_crop = keras.layers.RandomCrop(40, 48, seed=0)  # bilinear resize of the masks
    with pytest.raises(DataError, match=r"interpolated the masks.*RandomCrop"):
        tfkd.data.segmentation_dataset(x, y, 4, augment=upsizing_crop, ignore_label=255)
    pad = keras.layers.RandomTranslation(0.3, 0.3, fill_mode="constant", seed=0)
    with pytest.raises(DataError, match=r"pads the masks.*ignore_label is None"):
        tfkd.data.segmentation_dataset(x, y, 4, augment=pad)
    with pytest.raises(DataError, match=r"per image \(4,\) or per pixel \(4, 24, 32\)"):
        tfkd.data.segmentation_dataset(x, y, 4, sample_weight=np.ones((4, 3)))


def test_random_augmentation_is_detected_for_teacher_caching():
    x, y = blocks(n=4)
    plain = tfkd.data.segmentation_dataset(x, y, 2, shuffle=True, seed=0)
    augmented = tfkd.data.segmentation_dataset(x, y, 2, augment=True, ignore_label=255)
    assert tfkd.data.random_ops(plain) == []
    assert any("Random" in op for op in tfkd.data.random_ops(augmented))


def tiny_segmenter(classes, name):
    inputs = keras.Input((None, None, 3))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="feat")(h)
    return keras.Model(inputs, keras.layers.Conv2D(classes, 1, name="logits")(h), name=name)


def test_dataset_feeds_fit_and_distiller_fit(camvid):
    x, y = camvid.train[0][:8], camvid.train[1][:8]
    ignore = camvid.ignore_label
    ds = tfkd.data.segmentation_dataset(x, y, 4, augment=True, shuffle=True, seed=0,
                                        ignore_label=ignore, num_classes=camvid.num_classes)
    model = tiny_segmenter(camvid.num_classes, "student")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=ignore))
    before = model.get_layer("logits").kernel.numpy().copy()
    history = model.fit(ds.take(1), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0
    assert not np.allclose(before, model.get_layer("logits").kernel.numpy())

    weighted = tfkd.data.segmentation_dataset(x, y, 4, sample_weight=np.ones(8), augment=True,
                                              seed=1, ignore_label=ignore)
    distiller = tfkd.Distiller(
        tiny_segmenter(camvid.num_classes, "s2"), tiny_segmenter(camvid.num_classes, "t"),
        knowledge=[tfkd.knowledge.PixelSoftTargets(temperature=2.0, ignore_label=ignore)])
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=ignore))
    logs = distiller.fit(weighted.take(1), epochs=1, verbose=0).history
    assert np.isfinite(logs["pixel_kd_loss"][0]) and logs["pixel_kd_loss"][0] > 0
    with pytest.raises(tfkd.data.RandomPipelineError, match="random"):
        tfkd.data.check_cacheable(distiller, weighted)
