"""tfkd.data detection: the annotations loader, its checks, and the box-aware pipeline."""
import json

import keras
import numpy as np
import pytest
from PIL import Image

import tfkd
from tfkd.data import DataError
from shared_paths import SHARED_DATA

RACCOON, COCO128 = SHARED_DATA / "raccoon", SHARED_DATA / "coco128"


def need(path):
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests need ../shared/data beside the repo.")
    return path


@pytest.fixture(scope="module")
def raccoon():
    return tfkd.data.load_detection(need(RACCOON), image_size=(96, 96))


def write_set(root, records, class_names=("cat", "dog"), size=(40, 30), write=True):
    """tfkd-schema annotations.json plus one PNG (W x H = `size`) per record."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for i, rec in enumerate(records):
        rec = {"file": f"images/im{i}.png", "split": "train" if i % 2 == 0 else "test",
               "width": size[0], "height": size[1], "boxes": [], "classes": [], **rec}
        if write:
            pixels = np.random.default_rng(i).integers(0, 255, (rec["height"], rec["width"], 3))
            Image.fromarray(pixels.astype("uint8")).save(root / rec["file"])
        out.append(rec)
    (root / "annotations.json").write_text(json.dumps(
        {"class_names": list(class_names), "box_format": "[xmin, ymin, xmax, ymax] in pixels",
         "images": out}))
    return root


GOOD = [{"boxes": [[2, 3, 20, 25]], "classes": [1]},
        {"boxes": [[0, 0, 40, 30], [10, 10, 12, 14]], "classes": [0, 1]},
        {"boxes": [], "classes": []},
        {"boxes": [[5.5, 1, 39, 29]], "classes": [0]}]


# -- loading the shared data sets -------------------------------------------------------------
def test_raccoon_loads_normalised_padded_boxes(raccoon):
    spec = json.loads((RACCOON / "annotations.json").read_text())
    assert (len(raccoon.train), len(raccoon.test), raccoon.val) == (160, 40, None)
    assert raccoon.class_names == ["raccoon"] and raccoon.category_ids is None
    tr = raccoon.train
    assert tr.images.shape == (160, 96, 96, 3) and tr.images.dtype == np.uint8
    assert tr.boxes.shape == (160, 3, 4) and tr.boxes.dtype == np.float32
    assert tr.classes.shape == (160, 3) and tr.classes.dtype == np.int32
    real = tr.classes >= 0
    assert set(np.unique(tr.classes[real])) == {0} and real.sum() == 173
    assert raccoon.test.num_boxes.sum() == 44
    assert tr.boxes.min() >= 0 and tr.boxes.max() <= 1
    assert np.all(tr.boxes[~real] == 0) and np.all(tr.classes[~real] == -1)
    assert np.all(tr.boxes[real][:, 2] > tr.boxes[real][:, 0])        # ymax > ymin
    # The first record, [xmin, ymin, xmax, ymax] pixels -> [ymin, xmin, ymax, xmax] / (H, W).
    rec = spec["images"][0]
    assert tr.files[0].endswith(rec["file"]) and tuple(tr.sizes[0]) == (rec["height"],
                                                                      rec["width"])
    x0, y0, x1, y1 = rec["boxes"][0]
    h, w = rec["height"], rec["width"]
    np.testing.assert_allclose(tr.boxes[0, 0], [y0 / h, x0 / w, y1 / h, x1 / w], atol=1e-6)
    assert "train 160, test 40" in raccoon.describe()
    assert len(raccoon.subset(max_train=5).train) == 5


def test_coco128_loads_80_classes_with_val_as_test():
    splits = tfkd.data.load_detection(need(COCO128), image_size=(64, 64))
    assert splits.num_classes == 80 and splits.class_names[:3] == ["person", "bicycle", "car"]
    assert len(splits.train) == 128 and len(splits.test) == 128          # "val" is the test
    assert splits.max_boxes == 42 and splits.train.num_boxes.sum() == 929
    assert splits.test.num_boxes.sum() == 898
    assert (splits.train.num_boxes == 0).sum() == 2                   # images without boxes
    real = splits.train.classes >= 0
    assert splits.train.classes[real].max() < 80 and splits.train.boxes.max() <= 1


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("record, words", [
    ({"boxes": [[2, 3, 45, 25]], "classes": [0]}, ["im0.png", "outside", "40x30"]),
    ({"boxes": [[20, 3, 10, 25]], "classes": [0]}, ["im0.png", "xmax < xmin", "swap"]),
    ({"boxes": [[2, 3, 10, 25]], "classes": [2]}, ["im0.png", "class id 2", "2 classes"]),
    ({"boxes": [[2, 3, 10, 25]], "classes": [0, 1]}, ["im0.png", "1 boxes but 2 class"]),
    ({"boxes": [[2, 3, 10]], "classes": [0]}, ["im0.png", "4 numbers"]),
])
def test_bad_boxes_raise_naming_the_image(tmp_path, record, words):
    write_set(tmp_path, [record] + GOOD[1:])
    with pytest.raises(DataError) as err:
        tfkd.data.load_detection(tmp_path)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_small_overshoot_is_clipped_and_zero_area_boxes_dropped(tmp_path):
    records = [{"boxes": [[-0.6, 0, 40.8, 30.5], [5, 5, 5, 20]], "classes": [0, 1]}] + GOOD[1:]
    write_set(tmp_path, records)
    with pytest.warns(UserWarning, match="dropped 1 zero-area box"):
        splits = tfkd.data.load_detection(tmp_path, image_size=(30, 40))
    np.testing.assert_allclose(splits.train.boxes[0, 0], [0, 0, 1, 1])
    assert splits.train.classes[0].tolist() == [0, -1]


def test_missing_image_empty_split_and_bad_json_raise(tmp_path):
    write_set(tmp_path / "a", GOOD)
    (tmp_path / "a" / "images" / "im2.png").unlink()
    with pytest.raises(DataError, match=r"1 image file\(s\) are missing.*im2.png.*image_dir="):
        tfkd.data.load_detection(tmp_path / "a")

    write_set(tmp_path / "b", [{**r, "split": "train"} for r in GOOD])
    with pytest.raises(DataError, match=r"test split is empty.*\['train'\].*splits="):
        tfkd.data.load_detection(tmp_path / "b")
    splits = tfkd.data.load_detection(tmp_path / "b", splits={"train": "train", "test": "train"})
    assert len(splits.test) == 4

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "annotations.json").write_text(json.dumps({"pictures": []}))
    with pytest.raises(DataError, match=r"neither tfkd's detection keys.*COCO's.*\['pictures'\]"):
        tfkd.data.load_detection(tmp_path / "c")
    (tmp_path / "c" / "annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        tfkd.data.load_detection(tmp_path / "c")
    with pytest.raises(DataError, match="No annotations at"):
        tfkd.data.load_detection(tmp_path / "nothing")

    write_set(tmp_path / "d", GOOD)
    spec = json.loads((tmp_path / "d" / "annotations.json").read_text())
    spec["box_format"] = "normalised [ymin, xmin, ymax, xmax]"
    (tmp_path / "d" / "annotations.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="box_format"):
        tfkd.data.load_detection(tmp_path / "d")


def to_coco(records, class_names, category_ids, with_split=True):
    images, annotations = [], []
    for i, rec in enumerate(records):
        images.append({"id": 100 + i, "file_name": rec["file"].split("/")[-1],
                       "width": rec["width"], "height": rec["height"],
                       **({"split": rec["split"]} if with_split else {})})
        for box, c in zip(rec["boxes"], rec["classes"]):
            x0, y0, x1, y1 = box
            annotations.append({"id": len(annotations), "image_id": 100 + i,
                                "category_id": category_ids[c], "iscrowd": 0,
                                "bbox": [x0, y0, x1 - x0, y1 - y0]})
    annotations.append({"id": 99, "image_id": 100, "category_id": category_ids[0],
                        "iscrowd": 1, "bbox": [0, 0, 5, 5]})          # a crowd region: skipped
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in zip(category_ids, class_names)]}


def test_coco_json_gives_the_same_arrays_as_the_schema(tmp_path):
    write_set(tmp_path, GOOD)
    ours = tfkd.data.load_detection(tmp_path, image_size=(24, 32))
    records = json.loads((tmp_path / "annotations.json").read_text())["images"]
    coco_path = tmp_path / "instances.json"
    coco_path.write_text(json.dumps(to_coco(records, ["cat", "dog"], [3, 17])))
    coco = tfkd.data.load_detection(coco_path, image_size=(24, 32),
                                    image_dir=tmp_path / "images")
    assert coco.class_names == ["cat", "dog"] and coco.category_ids == [3, 17]
    for a, b in ((ours.train, coco.train), (ours.test, coco.test)):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-6)
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_array_equal(a.images, b.images)
    assert coco.train.ids.tolist() == [100, 102]

    # Without image_dir, file names are relative to the json's folder.
    with pytest.raises(DataError, match="missing.*image_dir="):
        tfkd.data.load_detection(coco_path)
    # A COCO file without splits is split here (seeded); an unknown category is named.
    spec = to_coco(records, ["cat", "dog"], [3, 17], with_split=False)
    coco_path.write_text(json.dumps(spec))
    split = tfkd.data.load_detection(coco_path, image_dir=tmp_path / "images", image_size=None,
                                     test_fraction=0.25)
    assert (len(split.train), len(split.test)) == (3, 1)
    spec["annotations"][0]["category_id"] = 5
    coco_path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match="im0.png.*category_id 5.*not in 'categories'"):
        tfkd.data.load_detection(coco_path, image_dir=tmp_path / "images")


# -- the pipeline -------------------------------------------------------------------------------
H, W = 48, 64


def white_boxes(n=12, seed=0, max_boxes=3):
    """Black images with one white rectangle each; the box is its exact extent (+ padding rows)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, H, W, 3), "uint8")
    boxes = np.zeros((n, max_boxes, 4), "float32")
    classes = np.full((n, max_boxes), -1, "int32")
    for i in range(n):
        y0, x0 = rng.integers(0, H - 16), rng.integers(0, W - 24)
        y1, x1 = y0 + rng.integers(8, 16), x0 + rng.integers(8, 24)
        x[i, y0:y1, x0:x1] = 255
        boxes[i, 0] = [y0 / H, x0 / W, y1 / H, x1 / W]
        classes[i, 0] = 1
    return x, boxes, classes


def white_extent(image):
    ys, xs = np.nonzero(image.mean(-1) > 127)
    if not len(ys):
        return None
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], "float32")


def collect(ds):
    xs, bs, cs = [], [], []
    for x, t in ds:
        xs.append(x.numpy())
        bs.append(t["boxes"].numpy())
        cs.append(t["classes"].numpy())
    return np.concatenate(xs), np.concatenate(bs), np.concatenate(cs)


def test_flip_moves_the_box_with_the_white_pixels():
    x, boxes, classes = white_boxes(16)
    aug = tfkd.data.detection_augmentation(seed=1, zoom=0, translate=0, brightness=0,
                                           contrast=0)
    xs, bs, cs = collect(tfkd.data.detection_dataset(x, boxes, classes, 8, augment=aug,
                                                     shuffle=False, seed=1))
    flipped = 0
    for i in range(len(xs)):
        px = bs[i, 0] * [H, W, H, W]
        np.testing.assert_allclose(px, white_extent(xs[i]), atol=1e-3)
        if not np.allclose(bs[i, 0], boxes[i, 0]):
            np.testing.assert_allclose(bs[i, 0][[1, 3]], 1 - boxes[i, 0][[3, 1]], atol=1e-6)
            flipped += 1
        assert cs[i].tolist() == [1, -1, -1] and np.all(bs[i, 1:] == 0)   # padding stays
    assert 0 < flipped < len(xs)


def test_default_augmentation_keeps_boxes_on_their_pixels():
    x, boxes, classes = white_boxes(24, seed=3)
    aug = tfkd.data.detection_augmentation(seed=2, brightness=0, contrast=0)
    xs, bs, cs = collect(tfkd.data.detection_dataset(x, boxes, classes, 8, augment=aug,
                                                     seed=2))
    moved = 0
    for i in range(len(xs)):
        extent = white_extent(xs[i])
        assert np.all(cs[i, 1:] == -1) and np.all(bs[i, 1:] == 0)
        if cs[i, 0] == -1:       # pushed out of the image: padding, not a degenerate box
            assert extent is None or np.ptp(extent[[0, 2]]) < 2 or np.ptp(extent[[1, 3]]) < 2
            assert np.all(bs[i, 0] == 0)
            continue
        assert extent is not None
        np.testing.assert_allclose(bs[i, 0] * [H, W, H, W], extent, atol=1.5)
        moved += 1
    assert moved >= 20
    # The colour layers change pixels, not boxes.
    colour = tfkd.data.detection_augmentation(seed=0, flip=False, zoom=0, translate=0)
    xs, bs, _ = collect(tfkd.data.detection_dataset(x, boxes, classes, 8, augment=colour,
                                                    shuffle=False, seed=0))
    np.testing.assert_allclose(bs, boxes, atol=1e-6)
    assert not np.allclose(xs, x) and xs.min() >= 0 and xs.max() <= 255


def test_boxes_pushed_out_of_the_image_become_padding():
    x, boxes, classes = white_boxes(24, seed=5)
    shift = keras.Sequential([keras.layers.RandomTranslation(
        (0.6, 0.9), (0.6, 0.9), fill_mode="constant", bounding_box_format="rel_yxyx", seed=0)])
    xs, bs, cs = collect(tfkd.data.detection_dataset(x, boxes, classes, 8, augment=shift,
                                                     shuffle=False, seed=0))
    gone = cs[:, 0] == -1
    assert gone.sum() >= 5 and np.all(bs[gone] == 0)
    for i in np.flatnonzero(~gone):
        h, w = (bs[i, 0, 2:] - bs[i, 0, :2]) * [H, W]
        assert min(h, w) >= 1 and white_extent(xs[i]) is not None    # no valid sliver boxes


def test_encode_targets_and_a_deterministic_pipeline():
    import tensorflow as tf

    x, boxes, classes = white_boxes(10)
    calls = []

    def encode(b, c):
        calls.append(1)  # traced once; the values are cached without augmentation
        return {"cls": tf.one_hot(c, 2)}, {"cls": tf.cast(c >= 0, "float32")}

    ds = tfkd.data.detection_dataset(x, boxes, classes, 4, encode=encode, shuffle=True, seed=0)
    xb, y, w = next(iter(ds))
    assert xb.dtype == tf.float32 and float(tf.reduce_max(xb)) == 255.0
    assert y["cls"].shape == (4, 3, 2) and w["cls"].shape == (4, 3)
    assert len(calls) == 1 and tfkd.data.random_ops(ds) == []   # cache_teacher may use it
    assert sum(len(b[0]) for b in ds) == 10

    aug = tfkd.data.detection_dataset(x, boxes, classes, 4, encode=encode, augment=True)
    xb, y, w = next(iter(aug))
    assert y["cls"].shape == (4, 3, 2) and tfkd.data.random_ops(aug)

    # The same seed gives the same augmented boxes; pixel boxes are refused.
    first = [collect(tfkd.data.detection_dataset(x, boxes, classes, 5, augment=True,
                                                 seed=7))[1] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    with pytest.raises(DataError, match="normalised"):
        tfkd.data.detection_dataset(x, boxes * 64, classes)


def test_docstring_examples_run():
    import doctest

    from tfkd.data import detection

    result = doctest.testmod(detection, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
