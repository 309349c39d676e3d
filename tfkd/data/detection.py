"""Object-detection inputs: a box-annotation loader, box checks and a box-aware `tf.data` pipeline.

A detection sample is an image `(H, W, 3)` uint8 and a variable number of boxes, each with a
class id. Batches need fixed shapes, so every image's boxes are padded to `max_boxes` rows:

- `boxes` `(N, max_boxes, 4)` float32, **normalised `[ymin, xmin, ymax, xmax]`** in [0, 1]
  (fractions of the image's height and width: Keras' `"rel_yxyx"` format). Normalised boxes
  do not change when an image is resized, which is what an SSD does to its input.
- `classes` `(N, max_boxes)` int32, ids `0..num_classes-1`.
- Padding rows have class -1 and box `[0, 0, 0, 0]`.

What this module holds:

- `load_detection(path, image_size)`: an `annotations.json` in tfkd's schema (the layout of
  `shared/data/coco128` and `shared/data/raccoon`) or a COCO-format json, read into a
  `DetectionSplits` of in-memory arrays (images decoded once, resized to `image_size`).
- `check_detection(records, class_names)`: raises `DataError` naming the image and the fix for
  boxes outside their image, inverted boxes, unknown class ids, missing image files and empty
  splits; zero-area boxes are dropped with a warning.
- `detection_augmentation()`: the default box-aware augmentation (Keras 3 core layers).
- `detection_dataset(images, boxes, classes, batch_size, encode=..., augment=...)`: batches
  for `model.fit` / `tfkd.Distiller.fit`, optionally encoded into per-anchor targets.

    >>> splits = tfkd.data.load_detection("shared/data/raccoon")  # doctest: +SKIP
    >>> len(splits.train), len(splits.test), splits.max_boxes       # doctest: +SKIP
    (160, 40, 3)
    >>> tr = splits.train                                          # doctest: +SKIP
    >>> ds = tfkd.data.detection_dataset(tr.images, tr.boxes, tr.classes, 16,
    ...                                  augment=True)             # doctest: +SKIP

(`load_detection`'s docstring has an example that runs anywhere.)
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import warnings

import numpy as np

from tfkd.data import DataError

ANNOTATIONS_FILE = "annotations.json"
# Pixels a box may overshoot its image and still be clipped silently: annotation tools write
# boxes like [0, 0, 320, 240] on a 320x240 image, or round a border coordinate up.
BOX_TOLERANCE = 1.0
# After a geometric augmentation, boxes thinner than this (pixels of the model's input) are
# slivers that a zoom or shift cut at the border: they become padding (class -1), as in
# torchvision's SanitizeBoundingBoxes(min_size=1).
MIN_BOX_SIZE = 1.0
BOX_FORMAT = "rel_yxyx"
_TEST_NAMES = ("test", "val", "validation")


# -- containers -----------------------------------------------------------------------------
@dataclasses.dataclass
class DetectionSplit:
    """One split: `images (N, H, W, 3)` uint8, `boxes (N, M, 4)` float32 normalised
    `[ymin, xmin, ymax, xmax]`, `classes (N, M)` int32 (padding rows: class -1, box 0),
    `sizes (N, 2)` int32 original `(height, width)` in pixels (the frame of the json's pixel
    boxes: multiply normalised boxes by it for COCO-style ground truth), `files` the N image
    paths (str), `ids (N,)` int64 the COCO image ids (tfkd's schema: the record's position
    in `images`)."""

    images: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    sizes: np.ndarray
    files: list
    ids: np.ndarray

    def __len__(self):
        return len(self.images)

    @property
    def num_boxes(self):
        """(N,) number of real (non-padding) boxes per image."""
        return (self.classes >= 0).sum(axis=1)

    def take(self, n):
        """The first `n` images (all when `n` is None or 0)."""
        if not n:
            return self
        return DetectionSplit(self.images[:n], self.boxes[:n], self.classes[:n],
                              self.sizes[:n], list(self.files[:n]), self.ids[:n])


@dataclasses.dataclass
class DetectionSplits:
    """`train` / `test` (and `val`, or None) `DetectionSplit`s sharing `class_names` and one
    `max_boxes`. `category_ids[i]` is the COCO category id of class i (None for tfkd's
    schema, whose class ids are already 0..K-1)."""

    train: DetectionSplit
    test: DetectionSplit
    class_names: list
    val: DetectionSplit | None = None
    source: str = ""
    category_ids: list | None = None

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        return tuple(self.train.images.shape[1:])

    @property
    def max_boxes(self):
        return self.train.boxes.shape[1]

    def subset(self, max_train=None, max_test=None):
        """The first `max_train` / `max_test` images of each split (json order)."""
        return dataclasses.replace(
            self, train=self.train.take(max_train), test=self.test.take(max_test),
            val=None if self.val is None else self.val.take(max_test))

    def describe(self):
        parts = [f"{name} {len(s)}" for name, s in
                 (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None]
        return (f"{self.source or 'data'}: {', '.join(parts)} images of shape "
                f"{self.image_shape}, {self.num_classes} classes, up to {self.max_boxes} "
                "boxes an image")


# -- reading the json -----------------------------------------------------------------------
def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise DataError(f"'{path}' is not valid JSON ({e}).") from e


def _is_coco(spec):
    return isinstance(spec, dict) and {"images", "annotations", "categories"} <= set(spec)


def _schema_error(path, spec):
    keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
    return DataError(
        f"'{path}' has neither tfkd's detection keys {{class_names, images}} (images = "
        "[{file, split, width, height, boxes: [[xmin, ymin, xmax, ymax], ...] in pixels, "
        "classes: [id, ...]}, ...]) nor COCO's {images, annotations, categories}; it has "
        f"{keys}. Write one of the two layouts.")


def _check_box_format(path, box_format):
    """tfkd's schema stores pixel `[xmin, ymin, xmax, ymax]`; refuse a file that says otherwise."""
    if box_format is None:
        return
    text = str(box_format).lower().replace(" ", "")
    pixel_xyxy = text.startswith("[xmin,ymin,xmax,ymax]") or text.startswith("xyxy")
    relative = any(w in text for w in ("normali", "relative", "rel_", "fraction"))
    if not pixel_xyxy or relative:
        raise DataError(
            f"'{path}' says box_format = {box_format!r}; load_detection reads pixel "
            "[xmin, ymin, xmax, ymax] boxes (box_format '[xmin, ymin, xmax, ymax] in pixels'). "
            "Convert the boxes to that format, or write a COCO json ([x, y, width, height]).")


def _records_from_schema(spec, path, image_dir):
    """tfkd's schema -> (records, class_names, None)."""
    missing = [k for k in ("class_names", "images") if k not in spec]
    if missing or not isinstance(spec.get("images"), list):
        raise _schema_error(path, spec)
    _check_box_format(path, spec.get("box_format"))
    records = []
    for i, rec in enumerate(spec["images"]):
        if not isinstance(rec, dict) or "file" not in rec:
            raise DataError(f"'{path}': images[{i}] has no 'file' (each record is {{file, "
                            "split, width, height, boxes, classes}}).")
        records.append({
            "file": str(rec["file"]), "path": image_dir / rec["file"],
            "split": rec.get("split"), "width": rec.get("width"), "height": rec.get("height"),
            "boxes": rec.get("boxes", []), "classes": rec.get("classes", []), "id": i})
    return records, [str(n) for n in spec["class_names"]], None


def _records_from_coco(spec, path, image_dir):
    """A COCO json -> (records, class_names, category_ids); categories sorted by id become the
    contiguous class ids 0..K-1 (COCO's own ids have gaps: 1..90 for 80 classes)."""
    categories = sorted(spec["categories"], key=lambda c: c["id"])
    category_ids = [int(c["id"]) for c in categories]
    index = {cid: i for i, cid in enumerate(category_ids)}
    records, by_id = [], {}
    for i, im in enumerate(spec["images"]):
        if "file_name" not in im or "id" not in im:
            raise DataError(f"'{path}': images[{i}] needs 'id' and 'file_name' (COCO layout).")
        rec = {"file": str(im["file_name"]), "path": image_dir / im["file_name"],
               "split": im.get("split"), "width": im.get("width"), "height": im.get("height"),
               "boxes": [], "classes": [], "id": int(im["id"])}
        by_id[rec["id"]] = rec
        records.append(rec)
    for a in spec["annotations"]:
        if a.get("iscrowd", 0):
            continue  # a crowd region, which COCO's evaluation ignores: not a training box
        rec = by_id.get(a.get("image_id"))
        if rec is None:
            raise DataError(f"'{path}': annotation {a.get('id')} refers to image_id "
                            f"{a.get('image_id')}, which is not in 'images'.")
        cid = a.get("category_id")
        if cid not in index:
            raise DataError(
                f"'{path}': annotation {a.get('id')} of image '{rec['file']}' has category_id "
                f"{cid}, which is not in 'categories' (ids {category_ids[:10]}"
                f"{'...' if len(category_ids) > 10 else ''}). Add the category or fix the id.")
        x, y, w, h = (a.get("bbox") or [np.nan] * 4)[:4]
        rec["boxes"].append([x, y, x + w, y + h])
        rec["classes"].append(index[cid])
    return records, [str(c.get("name", c["id"])) for c in categories], category_ids


# -- checks ---------------------------------------------------------------------------------
def check_detection(records, class_names, splits=None, source="annotations",
                    tolerance=BOX_TOLERANCE):
    """Checks box annotations before anything is decoded; returns cleaned copies of the records.

    Each record is a dict `{"file", "path" (optional, where the image is), "width",
    "height", "boxes": [[xmin, ymin, xmax, ymax], ...] in pixels, "classes": [id, ...]}` (the
    records of tfkd's `annotations.json`). Raises `DataError` naming the image and the fix
    when a record has no positive width/height, boxes and classes differ in count, a box is
    not 4 finite numbers, `xmax < xmin` or `ymax < ymin`, a box is outside its image by more
    than `tolerance` pixels (a smaller overshoot is clipped), a class id is not one of
    `0..len(class_names)-1`, an image file is missing, or (with `splits`) a split is empty.
    Zero-area boxes (`xmax == xmin` or `ymax == ymin`, e.g. points or lines a tool wrote by
    mistake) carry no object extent: they are dropped with one `UserWarning` that counts them.

    Args:
        records: list of record dicts as above.
        class_names: one name per class id.
        splits: None, or `{role: [records]}` (e.g. `{"train": [...], "test": [...]}`): each
            must be non-empty.
        source: how the annotations are named in messages (e.g. the json's path).
        tolerance: pixels a box may overshoot its image before it is an error.

    Returns:
        New records with `boxes` a `(K, 4)` float64 array (clipped, zero-area rows removed)
        and `classes` a `(K,)` int64 array.

    Example:

    >>> import tfkd
    >>> rec = {"file": "a.jpg", "width": 100, "height": 50,
    ...        "boxes": [[10, 5, 60, 50.4]], "classes": [0]}
    >>> tfkd.data.check_detection([rec], ["cat"])[0]["boxes"].tolist()     # 50.4 -> 50
    [[10.0, 5.0, 60.0, 50.0]]
    >>> rec["classes"] = [1]
    >>> tfkd.data.check_detection([rec], ["cat"])
    Traceback (most recent call last):
    ...
    tfkd.data.DataError: annotations: image 'a.jpg' box 0 has class id 1, but there is 1 class ...
    """
    k = len(class_names)
    # Missing files first: a record without its image cannot have its size read either.
    missing = [str(r["path"]) for r in records
               if r.get("path") is not None and not pathlib.Path(r["path"]).is_file()]
    if missing:
        folder = pathlib.Path(missing[0]).parent
        raise DataError(
            f"{source}: {len(missing)} image file(s) are missing, e.g. {missing[:3]}. Image "
            f"paths are read relative to the annotations' folder ('{folder}' here); put the "
            "images there, fix 'file' / 'file_name', or pass image_dir=<the images' folder>.")
    out, dropped = [], []
    for rec in records:
        name = rec.get("file", "?")
        where = f"{source}: image '{name}'"
        w, h = rec.get("width"), rec.get("height")
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and v > 0
                   for v in (w, h)):
            raise DataError(f"{where} has width={w!r}, height={h!r}; give the image's size in "
                            "pixels (its boxes are pixel coordinates in that frame).")
        boxes, classes = rec.get("boxes", []), rec.get("classes", [])
        if len(boxes) != len(classes):
            raise DataError(f"{where} has {len(boxes)} boxes but {len(classes)} class ids; "
                            "give one class id per box (same order).")
        try:
            b = np.asarray(boxes, "float64").reshape(len(boxes), 4)
            c = np.asarray(classes, "float64").reshape(len(classes))
        except (ValueError, TypeError) as e:
            raise DataError(f"{where}: every box must be 4 numbers [xmin, ymin, xmax, ymax] and "
                            f"every class an integer id; got boxes like {list(boxes)[:2]} "
                            f"({e}).") from e
        for j in range(len(b)):
            box = [round(float(v), 2) for v in b[j]]
            if not np.all(np.isfinite(b[j])):
                raise DataError(f"{where} box {j} {box} is not 4 finite numbers.")
            if c[j] != np.round(c[j]) or not 0 <= c[j] < k:
                raise DataError(
                    f"{where} box {j} has class id {classes[j]!r}, but there "
                    f"{'is 1 class' if k == 1 else f'are {k} classes'} (ids 0..{k - 1}: "
                    f"{list(class_names)[:5]}{'...' if k > 5 else ''}). Add the class to "
                    "class_names or fix the id.")
            x0, y0, x1, y1 = b[j]
            if x1 < x0 or y1 < y0:
                raise DataError(
                    f"{where} box {j} {box} has xmax < xmin or ymax < ymin. Boxes must be "
                    "[xmin, ymin, xmax, ymax]; swap the corners, or convert [x, y, width, "
                    "height] boxes (xmax = x + width).")
            if (x0 < -tolerance or y0 < -tolerance or x1 > w + tolerance
                    or y1 > h + tolerance):
                raise DataError(
                    f"{where} box {j} {box} is outside the {w}x{h} (WxH) image by more than "
                    f"{tolerance:g} pixel. Boxes are pixels of the stored image: if the image "
                    "was resized, scale its boxes too (or fix width/height).")
        b = np.clip(b, 0, [w, h, w, h])
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        if not keep.all():
            dropped.append((name, int((~keep).sum())))
        out.append({**rec, "boxes": b[keep], "classes": c[keep].astype("int64")})
    if dropped:
        n = sum(d[1] for d in dropped)
        warnings.warn(
            f"{source}: dropped {n} zero-area box(es) (xmax == xmin or ymax == ymin) in "
            f"{len(dropped)} image(s), e.g. '{dropped[0][0]}'. A box needs width and height.",
            UserWarning, stacklevel=2)
    for role, items in (splits or {}).items():
        if not items:
            found = sorted({str(r.get("split")) for r in records})
            raise DataError(
                f"{source}: the {role} split is empty (the records' 'split' values are "
                f"{found}). Give every image a split, or pass splits={{'train': ..., "
                "'test': ...}} naming the values to use.")
    return out


# -- loading --------------------------------------------------------------------------------
def _fill_sizes(records):
    """Records without width/height get them from the image header (PIL reads no pixels)."""
    from PIL import Image

    for rec in records:
        if rec.get("width") is None or rec.get("height") is None:
            if not pathlib.Path(rec["path"]).is_file():
                continue  # check_detection reports it
            with Image.open(rec["path"]) as im:
                rec["width"], rec["height"] = im.size


def _assign_splits(records, splits, test_fraction, seed, source):
    """{role: [records]} for train / test (/ val) from the records' 'split' values."""
    values = {r.get("split") for r in records}
    if values == {None}:
        # No split in the file (a COCO json usually holds one split): split here, seeded.
        if not 0 < test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}.")
        order = np.random.default_rng(seed).permutation(len(records))
        n_test = min(len(records) - 1, max(1, int(round(len(records) * test_fraction))))
        test = set(order[:n_test].tolist())
        return {"train": [r for i, r in enumerate(records) if i not in test],
                "test": [r for i, r in enumerate(records) if i in test]}
    if None in values:
        first = next(r["file"] for r in records if r.get("split") is None)
        raise DataError(f"{source}: some images have a 'split' and some do not (e.g. "
                        f"'{first}'). Give every image a split.")
    if splits is None:
        test = next((n for n in _TEST_NAMES if n in values), "test")
        splits = {"train": "train", "test": test}
        if test == "test" and "val" in values:
            splits["val"] = "val"
    if not isinstance(splits, dict) or not {"train", "test"} <= set(splits) or \
            not set(splits) <= {"train", "test", "val"}:
        raise DataError(f"splits must map 'train', 'test' (and optionally 'val') to split "
                        f"values; got {splits!r}.")
    roles = {}
    for role, names in splits.items():
        names = {names} if isinstance(names, str) else set(names)
        roles[role] = [r for r in records if r.get("split") in names]
    return roles


def _decode(path, image_size):
    import tensorflow as tf

    raw = tf.io.read_file(str(path))
    try:
        if str(path).lower().endswith((".jpg", ".jpeg")):
            # INTEGER_ACCURATE matches PIL's decoder exactly (TF's default differs by up to 5).
            img = tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE")
        else:
            img = tf.io.decode_image(raw, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as e:
        reason = (e.message or "").strip().splitlines()[0] if e.message else "corrupt"
        raise DataError(f"Cannot decode the image '{path}' ({reason}). Remove it from the "
                        "annotations, or re-save it as a valid JPEG/PNG.") from e
    hw = tuple(int(s) for s in img.shape[:2])
    if image_size is not None and hw != tuple(image_size):
        # A plain resize (no letterbox): normalised boxes stay valid; antialias like PIL.
        img = tf.image.resize(img, image_size, method="bilinear", antialias=True)
        img = tf.clip_by_value(tf.round(img), 0, 255)
    return np.asarray(img.numpy(), "uint8"), hw


def _to_split(records, image_size, max_boxes, source):
    images, sizes = [], []
    boxes = np.zeros((len(records), max_boxes, 4), "float32")
    classes = np.full((len(records), max_boxes), -1, "int32")
    for i, rec in enumerate(records):
        img, hw = _decode(rec["path"], image_size)
        if hw != (int(rec["height"]), int(rec["width"])):
            raise DataError(
                f"{source}: image '{rec['file']}' is {hw[1]}x{hw[0]} (WxH) but the annotations "
                f"say {rec['width']}x{rec['height']}; its pixel boxes would be in the wrong "
                "frame. Fix width/height (and the boxes) for this image.")
        images.append(img)
        sizes.append(hw)
        b, n = rec["boxes"], len(rec["boxes"])
        if n:
            h, w = hw
            # Pixel [xmin, ymin, xmax, ymax] -> normalised [ymin, xmin, ymax, xmax].
            boxes[i, :n] = np.clip(b[:, [1, 0, 3, 2]] / [h, w, h, w], 0, 1)
            classes[i, :n] = rec["classes"]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"{source}: the images have different sizes {sorted(shapes)[:4]}; pass "
                        "image_size=(H, W) to resize them.")
    return DetectionSplit(np.stack(images), boxes, classes, np.asarray(sizes, "int32"),
                          [str(r["path"]) for r in records],
                          np.asarray([r["id"] for r in records], "int64"))


def load_detection(path, image_size=(192, 192), splits=None, max_images=None, max_boxes=None,
                   image_dir=None, test_fraction=0.2, seed=0):
    """Loads box annotations and their images into a `DetectionSplits` of in-memory arrays.

    Two layouts:

    - tfkd's schema (`shared/data/coco128`, `shared/data/raccoon`): a folder holding
      `annotations.json`, or that file, with `class_names` and `images` = `[{file, split,
      width, height, boxes: [[xmin, ymin, xmax, ymax], ...] (pixels), classes: [id, ...]},
      ...]`; `file` is relative to the json's folder (e.g. `images/raccoon-1.jpg`).
    - a COCO json (`images`, `annotations` with `bbox` = `[x, y, width, height]` pixels,
      `categories`); `file_name` is relative to `image_dir` (default: the json's folder).
      Categories sorted by id become the class ids 0..K-1 (`category_ids` maps back);
      `iscrowd` annotations are skipped.

    Every image is decoded once (JPEGs with `dct_method="INTEGER_ACCURATE"`, as PIL decodes)
    and resized plainly to `image_size` (no letterbox: normalised boxes do not change). The
    annotations are checked first with `check_detection` (errors name the image and the fix;
    zero-area boxes are dropped with a warning). Images keep the json's order.

    Args:
        path: a folder with `annotations.json`, or a json file of either layout.
        image_size: `(H, W)` of the returned images, or None to keep the stored size (all
            images must then share it).
        splits: which records' `split` values make each split: None (train = "train", test =
            "test", else "val" / "validation"; with both "test" and "val", val = "val"), or a
            dict like `{"train": "train", "test": "val"}` (values: a name or a list of names).
            Records without any `split` (a COCO json) are split here: `test_fraction` of
            them, seeded by `seed`.
        max_images: keep at most this many images per split (the first in json order).
        max_boxes: rows of the padded box arrays; None = the most boxes of any loaded image.
            An image with more boxes raises `DataError`.
        image_dir: the folder image paths are relative to (default: the json's folder).
        test_fraction, seed: the split of records that have no `split`.

    Returns:
        `DetectionSplits` whose `train` / `test` / `val` (`DetectionSplit`, val may be None)
        hold `images (N, H, W, 3)` uint8, `boxes (N, max_boxes, 4)` float32 normalised
        `[ymin, xmin, ymax, xmax]`, `classes (N, max_boxes)` int32 (padding: class -1, box
        0), `sizes (N, 2)` original `(height, width)`, `files`, `ids`.

    Example:

    >>> import json, pathlib, tempfile, numpy as np, tfkd
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "images").mkdir()
    >>> for name in ("a", "b"):
    ...     Image.fromarray(np.zeros((50, 100, 3), "uint8")).save(root / f"images/{name}.jpg")
    >>> records = [{"file": "images/a.jpg", "split": "train", "width": 100, "height": 50,
    ...             "boxes": [[10, 5, 60, 45]], "classes": [0]},
    ...            {"file": "images/b.jpg", "split": "test", "width": 100, "height": 50,
    ...             "boxes": [[0, 0, 50, 25], [50, 25, 100, 50]], "classes": [1, 0]}]
    >>> (root / "annotations.json").write_text(json.dumps(
    ...     {"class_names": ["cat", "dog"], "images": records})) > 0
    True
    >>> splits = tfkd.data.load_detection(root, image_size=(32, 32))
    >>> splits.train.images.shape, splits.max_boxes
    ((1, 32, 32, 3), 2)
    >>> splits.train.boxes[0].astype(float).round(3).tolist()   # [ymin, xmin, ymax, xmax] / (H, W)
    [[0.1, 0.1, 0.9, 0.6], [0.0, 0.0, 0.0, 0.0]]
    >>> splits.train.classes[0].tolist()            # -1: a padding row
    [0, -1]

    On the shared data: `load_detection("shared/data/raccoon")` gives train 160 and test 40
    images with boxes `(N, 3, 4)`; `load_detection("shared/data/coco128")` 128 + 128 (its
    "val" is the test split), 80 classes, up to 42 boxes.
    """
    path = pathlib.Path(path)
    json_path = path / ANNOTATIONS_FILE if path.is_dir() else path
    if not json_path.is_file():
        raise DataError(
            f"No annotations at '{json_path}'. Pass a folder holding {ANNOTATIONS_FILE} "
            "(tfkd's detection schema) or the path of a COCO-format json.")
    spec = _read_json(json_path)
    base = pathlib.Path(image_dir) if image_dir is not None else json_path.parent
    source = f"'{json_path}'"
    if _is_coco(spec):
        records, class_names, category_ids = _records_from_coco(spec, json_path, base)
    elif isinstance(spec, dict) and "class_names" in spec and "images" in spec:
        records, class_names, category_ids = _records_from_schema(spec, json_path, base)
    else:
        raise _schema_error(json_path, spec)
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
    roles = _assign_splits(records, splits, test_fraction, seed, source)
    if max_images:
        roles = {role: items[:max_images] for role, items in roles.items()}
    used = [r for items in roles.values() for r in items]
    _fill_sizes(used)
    checked = iter(check_detection(used, class_names, splits=roles, source=source))
    roles = {role: [next(checked) for _ in items] for role, items in roles.items()}
    most = max(len(r["boxes"]) for items in roles.values() for r in items)
    if max_boxes is None:
        max_boxes = max(most, 1)  # at least one row, so that shapes stay valid
    elif most > max_boxes:
        worst = max((r for items in roles.values() for r in items), key=lambda r: len(r["boxes"]))
        raise DataError(f"{source}: image '{worst['file']}' has {most} boxes but "
                        f"max_boxes={max_boxes}. Pass max_boxes>={most} (or None).")
    out = {role: _to_split(items, image_size, max_boxes, source) for role, items in roles.items()}
    return DetectionSplits(train=out["train"], test=out["test"], val=out.get("val"),
                           class_names=class_names, source=str(json_path),
                           category_ids=category_ids)


# -- tf.data --------------------------------------------------------------------------------
def detection_augmentation(seed=None, flip=True, zoom=(-0.25, 0.25), translate=0.1,
                           brightness=0.2, contrast=0.2):
    """The default box-aware augmentation: flip, scale, shift and colour jitter.

    A `keras.Sequential` of Keras 3 core layers, all with `bounding_box_format="rel_yxyx"`,
    called on one sample `{"images": (H, W, 3) float 0..255, "bounding_boxes": {"boxes":
    (M, 4), "labels": (M,)}}`: `RandomFlip("horizontal")`, `RandomZoom(zoom)` (one factor for
    height and width, so the aspect ratio is kept; negative = zoom in, positive = zoom out),
    `RandomTranslation(translate, translate)`, `RandomBrightness` and `RandomContrast` (which
    leave the boxes alone). Zoom and shift pad with black (`fill_mode="constant"`): Keras'
    default "reflect" would mirror objects into the padding without boxes. Each layer moves
    the boxes with the image (within a pixel, as tests check) and gives boxes it pushes
    wholly out of the image the label -1; `detection_dataset` also turns slivers thinner than
    a pixel into padding. Not used: `RandomCrop` and `RandomRotation`, whose box transforms
    are wrong in Keras 3.15 for relative formats (crop swaps x and y; rotation collapses
    the boxes).

    Example:

    >>> import numpy as np, tfkd
    >>> aug = tfkd.data.detection_augmentation(seed=0)
    >>> out = aug({"images": np.zeros((32, 32, 3), "float32"), "bounding_boxes": {
    ...     "boxes": np.array([[0.2, 0.2, 0.6, 0.6]], "float32"),
    ...     "labels": np.array([0], "int32")}}, training=True)
    >>> tuple(out["bounding_boxes"]["boxes"].shape)
    (1, 4)
    """
    import keras

    def layer_seed(i):
        return None if seed is None else int(seed) + i

    fmt = {"bounding_box_format": BOX_FORMAT}
    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=layer_seed(0), **fmt))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="constant", seed=layer_seed(1),
                                              **fmt))
    if translate:
        layers.append(keras.layers.RandomTranslation(translate, translate, fill_mode="constant",
                                                     seed=layer_seed(2), **fmt))
    if brightness:
        layers.append(keras.layers.RandomBrightness(brightness, value_range=(0, 255),
                                                    seed=layer_seed(3), **fmt))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255),
                                                  seed=layer_seed(4), **fmt))
    return keras.Sequential(layers, name="detection_augmentation")


def _check_arrays(images, boxes, classes):
    images = np.asarray(images)
    boxes = np.asarray(boxes, "float32")
    classes = np.asarray(classes)
    if images.ndim != 4:
        raise DataError(f"detection_dataset: images must be (N, H, W, C); got {images.shape}.")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or classes.shape != boxes.shape[:2]:
        raise DataError(
            f"detection_dataset: boxes must be (N, M, 4) and classes (N, M); got {boxes.shape} "
            f"and {classes.shape}. Pad each image's boxes to M rows (class -1).")
    if len(images) != len(boxes):
        raise DataError(f"detection_dataset: {len(images)} images but {len(boxes)} box rows.")
    if classes.size and not np.issubdtype(classes.dtype, np.integer):
        if not np.all(np.mod(classes, 1) == 0):
            raise DataError("detection_dataset: classes must be integer ids (-1 = padding).")
    classes = classes.astype("int32")
    real = classes >= 0
    b = boxes[real]
    if b.size and (not np.all(np.isfinite(b)) or b.min() < -1e-3 or b.max() > 1 + 1e-3):
        raise DataError(
            f"detection_dataset: boxes must be normalised to [0, 1]; found values in "
            f"[{b.min():.3g}, {b.max():.3g}]. Divide pixel boxes by (H, W, H, W) of their "
            "image (load_detection does).")
    if b.size and np.any((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])):
        raise DataError("detection_dataset: boxes must be [ymin, xmin, ymax, xmax] with "
                        "ymax >= ymin and xmax >= xmin; some are inverted (xyxy boxes?).")
    boxes = np.where(real[..., None], np.clip(boxes, 0, 1), 0).astype("float32")
    return images, boxes, classes


def _sanitize(boxes, classes, height, width, min_size):
    """Clips boxes to the image; slivers and label -1 rows become padding (box 0, class -1)."""
    import tensorflow as tf

    boxes = tf.clip_by_value(tf.cast(boxes, "float32"), 0.0, 1.0)
    # Keras returns labels as floats; round before the cast so that -1 stays -1.
    classes = tf.cast(tf.round(tf.cast(classes, "float32")), "int32")
    h = (boxes[:, 2] - boxes[:, 0]) * tf.cast(height, "float32")
    w = (boxes[:, 3] - boxes[:, 1]) * tf.cast(width, "float32")
    valid = (classes >= 0) & (h >= min_size) & (w >= min_size)
    return (tf.where(valid[:, None], boxes, tf.zeros_like(boxes)),
            tf.where(valid, classes, -tf.ones_like(classes)))


def detection_dataset(images, boxes, classes, batch_size=16, encode=None, augment=False,
                      shuffle=True, seed=None):
    """Batches images and padded boxes as a `tf.data.Dataset` for `fit` / `tfkd.Distiller.fit`.

    Images come out float32 with their 0..255 values (as `segmentation_dataset` gives them):
    put the model's preprocessing (e.g. `keras.layers.Rescaling(1 / 127.5, offset=-1)`) in
    the model. Without `encode`, batches are `(images (B, H, W, 3), {"boxes": (B, M, 4)
    float32 normalised [ymin, xmin, ymax, xmax], "classes": (B, M) int32, -1 = padding})`.

    Args:
        images, boxes, classes: `(N, H, W, 3)` (uint8 or float 0..255), `(N, M, 4)` and
            `(N, M)`, as `load_detection` returns them.
        batch_size: samples per batch (the last batch may be smaller).
        encode: None, or a callable `encode(boxes (M, 4) float32, classes (M,) int32) -> (y,
            sample_weight)` traced in the pipeline, one sample at a time (e.g. matching the
            boxes to anchors); y and sample_weight may be dicts of tensors. Batches are then
            `(images, y, sample_weight)`. Without augmentation its outputs are computed once
            and cached (they do not change between epochs), so it must be deterministic.
        augment: False/None, True (`detection_augmentation(seed=seed)`), or a callable / Keras
            layer taking and returning one sample `{"images": (H, W, 3) float32,
            "bounding_boxes": {"boxes": (M, 4) rel_yxyx, "labels": (M,)}}` (Keras 3's
            augmentation layers with `bounding_box_format="rel_yxyx"` and `keras.Sequential`
            of them do). It runs per sample, before batching, so every image gets its own
            transform; the Distiller's teacher and student then see the same augmented view.
            Afterwards boxes are clipped to the image, and boxes the augmentation pushed out
            of it (or cut to slivers under 1 pixel of height or width) become padding.
        shuffle, seed: reshuffle the samples every epoch (seeded). With a `seed`, the
            augmentation runs sequentially so that its draws are reproducible (Keras' seed
            generators are shared state that parallel calls would consume in any order).

    Returns:
        A `tf.data.Dataset` of batches, prefetched.

    Example:

    >>> import numpy as np, tfkd
    >>> x = np.zeros((8, 32, 32, 3), "uint8")
    >>> b = np.tile(np.array([[0.2, 0.1, 0.6, 0.5], [0, 0, 0, 0]], "float32"), (8, 1, 1))
    >>> c = np.tile(np.array([0, -1], "int32"), (8, 1))
    >>> ds = tfkd.data.detection_dataset(x, b, c, 4, augment=True, seed=0)
    >>> images, target = next(iter(ds))
    >>> images.dtype, target["boxes"].shape, target["classes"].dtype
    (tf.float32, TensorShape([4, 2, 4]), tf.int32)
    """
    import keras
    import tensorflow as tf

    images, boxes, classes = _check_arrays(images, boxes, classes)
    n, height, width = len(images), images.shape[1], images.shape[2]
    if augment is True:
        augment = detection_augmentation(seed=seed)
    elif augment is False:
        augment = None
    if augment is not None and not callable(augment):
        raise TypeError(f"detection_dataset: `augment` must be True, False or a callable (e.g. "
                        f"a Keras augmentation layer); got {augment!r}.")
    if encode is not None and not callable(encode):
        raise TypeError(f"detection_dataset: `encode` must be a callable; got {encode!r}.")

    def run_augment(image, b, c):
        data = {"images": tf.cast(image, "float32"),
                "bounding_boxes": {"boxes": b, "labels": tf.cast(c, "float32")}}
        out = augment(data, training=True) if isinstance(augment, keras.layers.Layer) \
            else augment(data)
        if not isinstance(out, dict) or "images" not in out or "bounding_boxes" not in out:
            raise DataError(
                "detection_dataset: `augment` must return a dict with 'images' and "
                "'bounding_boxes' (as Keras' augmentation layers with bounding_box_format="
                f"'rel_yxyx' do); got {type(out).__name__}"
                f"{sorted(out) if isinstance(out, dict) else ''}.")
        b, c = _sanitize(out["bounding_boxes"]["boxes"], out["bounding_boxes"]["labels"],
                         height, width, MIN_BOX_SIZE)
        return tf.convert_to_tensor(out["images"], "float32"), b, c

    def targets(b, c):
        if encode is None:
            return ({"boxes": b, "classes": c},)
        result = encode(b, c)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise DataError("detection_dataset: `encode(boxes, classes)` must return "
                            f"(y, sample_weight); got {type(result).__name__}.")
        return tuple(result)

    if augment is None:
        # Deterministic targets: encode once, cache, and pair them with the uint8 images.
        labels = tf.data.Dataset.from_tensor_slices((boxes, classes))
        labels = labels.map(targets, num_parallel_calls=tf.data.AUTOTUNE)
        if encode is not None:
            labels = labels.cache()
        ds = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(images), labels))
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).map(
            lambda x, t: (tf.cast(x, "float32"),) + tuple(t),
            num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    ds = tf.data.Dataset.from_tensor_slices((images, boxes, classes))
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(run_augment, num_parallel_calls=1 if seed is not None else tf.data.AUTOTUNE)
    ds = ds.map(lambda x, b, c: (x,) + targets(b, c), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


__all__ = ["DetectionSplit", "DetectionSplits", "check_detection", "detection_augmentation",
           "detection_dataset", "load_detection"]
