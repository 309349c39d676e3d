"""Semantic-segmentation inputs: mask loaders, mask checks and a mask-aware `tf.data` pipeline.

A segmentation sample is an image `(H, W, C)` uint8 and a mask `(H, W)` of integer class ids,
one per pixel. Pixels whose id is the *ignore label* (CamVid's "Unlabelled" 11, the
conventional 255) belong to no class: a model predicts `num_classes = len(class_names)`
classes and the ignore label is not one of them. Keras leaves such pixels out of the loss
and the metrics with `keras.losses.SparseCategoricalCrossentropy(ignore_class=...)` and
`keras.metrics.MeanIoU(..., ignore_class=...)`; `tfkd.knowledge.PixelSoftTargets(
ignore_label=...)` does the same for distillation.

What this module holds:

- `load_segmentation_npz(path)`: an `.npz` of `x_train, y_train, x_test, y_test[, x_val,
  y_val]` with `(N, H, W)` masks, optional `class_names` / `class_colors` (CamVid's layout).
- `load_segmentation_folder(path)`: `images/` + `masks/` (class-id PNGs, same file stem),
  or `{train,test}/{images,masks}/`, optional `classes.txt` / `classes.json`.
- `check_masks(x, y, num_classes, ignore_label)`: raises `DataError` naming the sample and the
  fix for masks that do not fit their images or the classes.
- `masks_from_colors(masks, class_colors)`: colour-coded (RGB palette) masks -> class ids.
- `segmentation_augmentation()`: the default mask-aware augmentation (Keras 3 core layers).
- `segmentation_dataset(x, y, batch_size, augment=...)`: batches of (image float32,
  mask int32[, per-pixel weight float32]) for `model.fit` and `tfkd.Distiller.fit`.

Every loader returns a `tfkd.data.Splits` whose `train` / `val` / `test` are
`(images (N, H, W, C) uint8, masks (N, H, W) uint8 or int32)` and whose `ignore_label`,
`class_names`, `class_colors` describe the ids:

    >>> splits = tfkd.data.load_segmentation_npz("camvid.npz")   # 11 classes, ignore 11
    >>> ds = tfkd.data.segmentation_dataset(*splits.train, 16, augment=True, shuffle=True,
    ...                                     ignore_label=splits.ignore_label)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True, ignore_class=splits.ignore_label))
    >>> model.fit(ds, epochs=30)
"""
from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from tfkd.data import IMAGE_EXTENSIONS
from tfkd.data import DataError
from tfkd.data import Splits
from tfkd.data import _as_images

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
# A mask stem may be the image stem plus one of these (CamVid's "_L", "*_mask", ...).
MASK_SUFFIXES = ("_mask", "_masks", "_label", "_labels", "_gt", "_seg", "_L", "_annot")
# Class names that mean "no class": `ignore_label="auto"` takes such an id as the ignore label.
VOID_NAME = re.compile(r"^\s*(void|unlabell?ed|ignored?|don'?t[ _-]?care|dontcare|"
                       r"unknown|none|n/?a)\s*$", re.IGNORECASE)
CONVENTIONAL_IGNORE = 255
_SPLIT_KEYS = (
    {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")},
    {"train": ("train_images", "train_masks"), "val": ("val_images", "val_masks"),
     "test": ("test_images", "test_masks")},
    {"train": ("train_images", "train_labels"), "val": ("val_images", "val_labels"),
     "test": ("test_images", "test_labels")},
)


# -- checks -------------------------------------------------------------------------------
def _hw(shape):
    return f"{shape[0]}x{shape[1]}"


def _mask_array(y, what):
    """(N, H, W[, 1]) -> (N, H, W); refuses colour masks and other ranks."""
    y = np.asarray(y)
    if y.ndim == 4 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.ndim == 4 and y.shape[-1] in (3, 4):
        raise DataError(
            f"The {what} are colour images {y.shape}: masks must be single-channel class-id "
            "images (N, H, W), each pixel the id of its class (a class-id PNG: mode 'L' or "
            "'P'). Convert colour-coded masks with tfkd.data.masks_from_colors(masks, "
            "class_colors) (the loaders do it when the data set gives `class_colors`).")
    if y.ndim != 3:
        raise DataError(f"The {what} must be (N, H, W) or (N, H, W, 1) class-id masks; got "
                        f"shape {y.shape}.")
    return y


def _integer_ids(y, what, offset=0):
    """Masks as an integer array; fractional float values raise (named by sample index)."""
    if y.dtype == bool:
        return y.astype("uint8")
    if np.issubdtype(y.dtype, np.integer):
        return y
    if not np.issubdtype(y.dtype, np.floating):
        raise DataError(f"The {what} must hold integer class ids; got dtype {y.dtype}.")
    frac = np.mod(y, 1) != 0
    frac |= ~np.isfinite(y)
    if np.any(frac):
        sample = int(np.flatnonzero(frac.reshape(len(y), -1).any(axis=1))[0]) + offset
        values = np.unique(y[frac])[:5]
        raise DataError(
            f"The {what} must hold integer class ids; sample {sample} has fractional values "
            f"like {[round(float(v), 4) for v in values]}. This is what a mask resized with "
            "bilinear interpolation (or a probability map) looks like: resize masks with "
            "nearest neighbour (PIL Image.NEAREST, tf.image.resize(..., method='nearest')), "
            "or take the argmax of per-class probabilities.")
    return y.astype("int32")


def check_masks(x, y, num_classes, ignore_label=None, what="masks"):
    """Checks segmentation masks against their images and the classes; returns the masks.

    Raises `DataError` (naming the sample and the fix) when a mask is a colour image, when it
    holds fractional (interpolated) values, when its height and width differ from its
    image's, when the image and mask counts differ, or when an id is outside
    `[0, num_classes)` and is not `ignore_label`.

    Args:
        x: images `(N, H, W[, C])`, a list of per-sample arrays, or None (masks only).
        y: masks `(N, H, W)` or `(N, H, W, 1)`, or a list of `(H, W)` arrays.
        num_classes: number of classes a model predicts (ids `0..num_classes-1`), or None
            to check only shapes and dtype.
        ignore_label: the id of pixels that belong to no class (e.g. 255), or None.
        what: how the masks are named in messages (e.g. "train masks of 'camvid.npz'").

    Returns:
        The masks as an integer array `(N, H, W)` (float masks holding whole numbers are
        accepted and returned as int32), or a list of `(H, W)` integer arrays when `y` was a
        list.

    Example:

    >>> import numpy as np, tfkd
    >>> x = np.zeros((2, 4, 4, 3), "uint8")
    >>> y = np.array([[[0, 1, 2, 255]] * 4] * 2, "uint8")
    >>> tfkd.data.check_masks(x, y, num_classes=3, ignore_label=255).shape
    (2, 4, 4)
    >>> tfkd.data.check_masks(x, y, num_classes=3)          # 255 is not a class
    Traceback (most recent call last):
    ...
    tfkd.data.DataError: 8 pixels in 2 of 2 masks have ids outside the 3 classes ...
    """
    ragged = isinstance(y, (list, tuple))
    if ragged:
        masks = [_integer_ids(_mask_array(np.asarray(m)[None], what)[0][None], what, i)[0]
                 for i, m in enumerate(y)]
    else:
        masks = _integer_ids(_mask_array(y, what), what)
    if x is not None:
        n_x = len(x)
        if n_x != len(masks):
            raise DataError(f"There are {n_x} images but {len(masks)} {what}: every image "
                            "needs one mask (same order).")
        if ragged or isinstance(x, (list, tuple)):
            for i, (img, m) in enumerate(zip(x, masks)):
                if tuple(np.shape(img)[:2]) != tuple(m.shape):
                    raise DataError(
                        f"Sample {i}: the image is {_hw(np.shape(img))} (HxW) but its mask "
                        f"is {_hw(m.shape)}. Each mask must have its image's size: resize "
                        "both together (images bilinear, masks nearest).")
        else:
            x_hw = tuple(np.shape(x)[1:3])
            if x_hw != tuple(masks.shape[1:3]):
                raise DataError(
                    f"The images are {_hw(x_hw)} (HxW) but the {what} are "
                    f"{_hw(masks.shape[1:3])} (all {n_x} samples, e.g. sample 0). Each mask "
                    "must have its image's size: resize both together (images bilinear, "
                    "masks nearest).")
    if num_classes is None:
        return masks
    flat = masks if not ragged else (np.concatenate([m.ravel() for m in masks]) if masks
                                     else np.zeros(0, "int32"))
    outside = (flat < 0) | (flat >= num_classes)
    if ignore_label is not None:
        outside &= flat != ignore_label
    if np.any(outside):
        bad = np.unique(flat[outside])
        if ragged:
            per_mask = [bool(np.any(((m < 0) | (m >= num_classes)) & (
                m != (ignore_label if ignore_label is not None else -2**31)))) for m in masks]
            first, count = per_mask.index(True), sum(per_mask)
        else:
            per_mask = outside.reshape(len(masks), -1).any(axis=1)
            first, count = int(np.flatnonzero(per_mask)[0]), int(per_mask.sum())
        ignore_text = ("no ignore label is set" if ignore_label is None
                       else f"the ignore label is {ignore_label}")
        raise DataError(
            f"{int(outside.sum())} pixels in {count} of {len(masks)} {what} have ids outside "
            f"the {num_classes} classes (0..{num_classes - 1}) and {ignore_text}: found "
            f"{bad[:10].tolist()} (first in sample {first}). If such an id marks unlabelled "
            "pixels, pass ignore_label=<that id> (e.g. 255); if it is a real class, give "
            "class_names for every id (num_classes = len(class_names)).")
    return masks


def masks_from_colors(masks, class_colors, what="masks"):
    """Colour-coded masks `(..., H, W, 3)` (one RGB colour per class) -> class ids `(..., H, W)`.

    Pixel `p` gets the id `i` with `class_colors[i] == masks[p]`. A colour that is not in
    `class_colors` raises `DataError` listing the unknown colours. An alpha channel is dropped.

    Example:

    >>> import numpy as np, tfkd
    >>> colors = np.array([[0, 0, 0], [128, 64, 128]], "uint8")
    >>> rgb = np.array([[[0, 0, 0], [128, 64, 128]]], "uint8")      # (1, 2, 3)
    >>> tfkd.data.masks_from_colors(rgb, colors).tolist()
    [[0, 1]]
    """
    masks = np.asarray(masks)
    colors = np.asarray(class_colors).astype("int64")
    if masks.shape[-1] not in (3, 4) or colors.ndim != 2 or colors.shape[1] != 3:
        raise DataError(f"masks_from_colors needs (..., 3) RGB masks and (K, 3) colours; got "
                        f"{masks.shape} and {colors.shape}.")
    rgb = masks[..., :3].astype("int64")
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2]
    order = np.argsort(palette, kind="stable")
    sorted_palette = palette[order]
    pos = np.clip(np.searchsorted(sorted_palette, codes), 0, len(palette) - 1)
    known = sorted_palette[pos] == codes
    if not np.all(known):
        unknown = np.unique(codes[~known])[:5]
        listed = [[int(c >> 16), int((c >> 8) & 255), int(c & 255)] for c in unknown]
        raise DataError(
            f"{int((~known).sum())} pixels of the colour-coded {what} have colours that are "
            f"not in class_colors: {listed}. Give a colour for every class, or save the masks "
            "as class-id PNGs.")
    dtype = "uint8" if len(palette) <= 256 else "int32"
    return order[pos].astype(dtype)


# -- class ids ------------------------------------------------------------------------------
def _present_ids(masks):
    ids = set()
    for m in masks:
        m = np.asarray(m)
        if m.dtype == np.uint8:
            ids |= set(np.flatnonzero(np.bincount(m.ravel(), minlength=1)).tolist())
        else:
            ids |= set(np.unique(m).tolist())
    return sorted(int(i) for i in ids)


def _resolve_classes(masks, raw_names, raw_colors, ignore_label, source):
    """Works out class names, colours and the ignore label from the ids and the names per id.

    Returns `(class_names, class_colors, ignore_color, ignore_label, remap)` where `remap`
    is None or `(void_id, new_ignore)`: the void id is inside the class range, so it becomes
    `new_ignore` and the ids above it shift down by one (see `load_segmentation_npz`).
    """
    present = _present_ids(masks)
    if raw_names is not None:
        raw_names = [str(n) for n in raw_names]
    if raw_colors is not None:
        raw_colors = np.asarray(raw_colors, "uint8").reshape(-1, 3)
    if isinstance(ignore_label, str):
        if ignore_label != "auto":
            raise DataError(f"ignore_label must be an integer id, None or 'auto'; got "
                            f"{ignore_label!r}.")
        void = [i for i, n in enumerate(raw_names or []) if VOID_NAME.match(n)]
        if len(void) > 1:
            raise DataError(
                f"{source}: several classes are named like 'no class': "
                f"{[(i, raw_names[i]) for i in void]}. Pass ignore_label=<the id to ignore>.")
        if void:
            ignore_label = void[0]
        elif CONVENTIONAL_IGNORE in present and CONVENTIONAL_IGNORE >= len(raw_names or []):
            ignore_label = CONVENTIONAL_IGNORE
        else:
            ignore_label = None
    elif ignore_label is not None:
        if isinstance(ignore_label, bool) or int(ignore_label) != ignore_label:
            raise DataError(f"ignore_label must be an integer id, None or 'auto'; got "
                            f"{ignore_label!r}.")
        ignore_label = int(ignore_label)
    ids = [i for i in present if i != ignore_label]
    n_raw = len(raw_names) if raw_names is not None else (max(ids) + 1 if ids else 0)
    names = raw_names if raw_names is not None else [str(i) for i in range(n_raw)]
    colors, ignore_color, remap = raw_colors, None, None
    if ignore_label is not None and 0 <= ignore_label < n_raw:
        # The ignore id names a class slot: it is not a class a model predicts.
        names = names[:ignore_label] + names[ignore_label + 1:]
        if raw_colors is not None and ignore_label < len(raw_colors):
            ignore_color = raw_colors[ignore_label]
            colors = np.delete(raw_colors, ignore_label, axis=0)
        if ignore_label < n_raw - 1:
            new_ignore = CONVENTIONAL_IGNORE if n_raw <= CONVENTIONAL_IGNORE else n_raw - 1
            remap = (ignore_label, new_ignore)
            ignore_label = new_ignore
    if colors is not None and len(colors) < len(names):
        colors = None  # a partial palette cannot colour every class
    if not names:
        raise DataError(f"{source}: the masks hold no class ids besides the ignore label "
                        f"{ignore_label}.")
    return names, colors, ignore_color, ignore_label, remap


def _apply_remap(y, remap):
    if remap is None:
        return y
    void, new_ignore = remap
    out = y.astype("int32") if np.iinfo(y.dtype).max < new_ignore else y.copy()
    is_void, above = y == void, y > void
    out[above] -= 1
    out[is_void] = new_ignore
    return out


# -- .npz -----------------------------------------------------------------------------------
def load_segmentation_npz(path, ignore_label="auto", class_names=None):
    """Loads a segmentation `.npz` archive (images + class-id masks) into `Splits`.

    Arrays: `x_train, y_train, x_test, y_test[, x_val, y_val]` (also `train_images,
    train_masks, ...`) with images `(N, H, W[, C])` and masks `(N, H, W)` or `(N, H, W, 1)`
    of class ids; optional `class_names` (one per id in the masks) and `class_colors`
    (`(K, 3)` uint8, one RGB colour per id). Colour-coded `(N, H, W, 3)` masks are mapped to
    ids through `class_colors` when the archive has them.

    Args:
        path: the `.npz` file.
        ignore_label: the id of pixels that belong to no class. `"auto"` (default) takes the
            id whose class name means "no class" (void, unlabelled, ignore, don't care, ...:
            CamVid's 11 "Unlabelled"), else 255 when the masks hold 255, else None. None:
            every id is a class. An int: that id. An ignore id that names a class slot is
            removed from `class_names` (and `class_colors`): `num_classes` counts only the
            classes a model predicts. When that id is not the last one (e.g. void = 0), the
            masks are remapped so that classes stay `0..num_classes-1`: the void pixels
            become 255 (the returned `ignore_label`) and the ids above shift down by one.
        class_names: names per id in the masks, overriding the archive's.

    Returns:
        `Splits` with `train=(x, y)`, `test=(x, y)`, `val=(x, y)` or None (x uint8
        `(N, H, W, C)`, y `(N, H, W)` integer masks), `class_names`, `class_colors` (one row
        per class, or None), `ignore_label`, `ignore_color`.

    Example:

    >>> splits = tfkd.data.load_segmentation_npz("camvid.npz")
    >>> splits.num_classes, splits.ignore_label, splits.class_colors.shape
    (11, 11, (11, 3))
    >>> splits.describe()
    'camvid.npz: train 367, val 101, test 233 images of shape (90, 120, 3), 11 classes, ignore label 11'
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"No .npz file at '{path}'.")
    with np.load(path) as archive:
        names = set(archive.files)
        for layout in _SPLIT_KEYS:
            if all(k in names for k in layout["train"] + layout["test"]):
                break
        else:
            raise DataError(
                f"'{path}' does not hold the expected arrays {{x_train, y_train, x_test, "
                f"y_test}} (or train_images, train_masks, test_images, test_masks); it has "
                f"{sorted(names)}. Save them with np.savez(path, x_train=..., y_train=..., "
                "x_test=..., y_test=...).")
        raw_names = class_names
        if raw_names is None and "class_names" in names:
            raw_names = [str(c) for c in archive["class_names"]]
        raw_colors = archive["class_colors"] if "class_colors" in names else None
        splits = {}
        for split, (xk, yk) in layout.items():
            if xk not in names or yk not in names:
                continue
            x = _as_images(archive[xk], f"'{xk}' in {path.name}")
            y = np.asarray(archive[yk])
            if y.ndim == 4 and y.shape[-1] in (3, 4) and raw_colors is not None:
                y = masks_from_colors(y, raw_colors, what=f"'{yk}' in {path.name}")
            y = _integer_ids(_mask_array(y, f"'{yk}' masks in {path.name}"),
                             f"'{yk}' masks in {path.name}")
            splits[split] = (x, y)
    resolved = _resolve_classes([s[1] for s in splits.values()], raw_names, raw_colors,
                                ignore_label, f"'{path}'")
    class_names, class_colors, ignore_color, ignore_label, remap = resolved
    for split, (x, y) in list(splits.items()):
        y = _apply_remap(y, remap)
        splits[split] = (x, check_masks(x, y, len(class_names), ignore_label,
                                        what=f"{split} masks of '{path.name}'"))
    return Splits(train=splits["train"], test=splits["test"], val=splits.get("val"),
                  class_names=class_names, source=str(path), ignore_label=ignore_label,
                  class_colors=class_colors, ignore_color=ignore_color)


# -- folders --------------------------------------------------------------------------------
def _files(folder, extensions):
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions
                  and not p.name.startswith("."))


def _mask_key(stem, image_stems):
    if stem in image_stems:
        return stem
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and stem[: -len(suffix)] in image_stems:
            return stem[: -len(suffix)]
    return stem


def _pairs(folder):
    """[(image path, mask path)] of `folder/images` and `folder/masks`, paired by file stem."""
    image_dir, mask_dir = folder / "images", folder / "masks"
    images = _files(image_dir, IMAGE_EXTENSIONS)
    lossy = [p.name for p in _files(mask_dir, (".jpg", ".jpeg"))]
    if lossy:
        raise DataError(
            f"'{mask_dir}' has JPEG masks ({', '.join(lossy[:3])}): JPEG compression changes "
            "pixel values, so class ids do not survive. Save masks as PNG class-id images.")
    masks = _files(mask_dir, MASK_EXTENSIONS)
    if not images:
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in '{image_dir}'.")
    by_stem = {}
    for p in images:
        if p.stem in by_stem:
            raise DataError(f"'{image_dir}' has two images with the stem '{p.stem}' "
                            f"({by_stem[p.stem].name}, {p.name}); masks are paired by stem.")
        by_stem[p.stem] = p
    mask_by_stem = {}
    for p in masks:
        key = _mask_key(p.stem, by_stem)
        if key in mask_by_stem:
            raise DataError(f"'{mask_dir}' has two masks for '{key}' "
                            f"({mask_by_stem[key].name}, {p.name}).")
        mask_by_stem[key] = p
    no_mask = sorted(set(by_stem) - set(mask_by_stem))
    no_image = sorted(set(mask_by_stem) - set(by_stem))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} images without a mask in '{mask_dir}': "
                         f"{[by_stem[s].name for s in no_mask[:5]]}")
        if no_image:
            parts.append(f"{len(no_image)} masks without an image in '{image_dir}': "
                         f"{[mask_by_stem[s].name for s in no_image[:5]]}")
        raise DataError(
            "; ".join(parts) + ". Each image needs a mask with the same file stem "
            "(images/a.jpg <-> masks/a.png); add the missing files or remove the extras.")
    return [(by_stem[s], mask_by_stem[s]) for s in sorted(by_stem)]


def _open(path):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"Cannot decode '{path}' ({e}). Remove the file, or re-save it as a "
                        "valid image.") from e
    return img


def _read_mask(path, class_colors):
    from PIL import Image

    mask = _open(path)
    if mask.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        # Mode 'P' (palette PNG, as in Pascal VOC): the pixel values are the palette
        # indices, i.e. the class ids; the palette is only for viewing.
        return mask, None
    if mask.mode == "LA":
        return mask.getchannel(0), None
    if mask.mode in ("RGB", "RGBA"):
        rgb = np.asarray(mask.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0],
                                                                       rgb[..., 2]):
            return Image.fromarray(rgb[..., 0]), None  # grey ids saved as RGB
        if class_colors is not None:
            return None, masks_from_colors(rgb, class_colors, what=f"mask '{path}'")
        raise DataError(
            f"The mask '{path}' is a colour ({mask.mode}) image: masks must be single-channel "
            "class-id PNGs (mode 'L' or 'P'), each pixel the id of its class. Save the ids "
            "(PIL: Image.fromarray(ids.astype('uint8')).save(...)), or give the colour of "
            "each class in classes.json ([{\"name\": ..., \"color\": [r, g, b]}, ...]) to "
            "map colour-coded masks to ids.")
    raise DataError(f"The mask '{path}' has PIL mode {mask.mode!r}; masks must be "
                    "single-channel class-id PNGs (mode 'L' or 'P').")


def _read_pairs(pairs, image_size, class_colors):
    from PIL import Image

    xs, ys, sizes = [], [], {}
    for image_path, mask_path in pairs:
        image = _open(image_path).convert("RGB")
        mask, ids = _read_mask(mask_path, class_colors)
        mask_hw = tuple(ids.shape) if mask is None else (mask.height, mask.width)
        if (image.height, image.width) != mask_hw:
            raise DataError(
                f"The mask '{mask_path}' is {_hw(mask_hw)} (HxW) but its image "
                f"'{image_path}' is {image.height}x{image.width}. Each mask must have its "
                "image's size.")
        if mask is None:
            mask = Image.fromarray(ids.astype("int32") if ids.dtype != np.uint8 else ids)
        if image_size is not None:
            h, w = image_size
            if (image.height, image.width) != (h, w):
                # Images bilinear; masks nearest, so that every pixel keeps a real class id.
                image = image.resize((w, h), Image.BILINEAR)
                mask = mask.resize((w, h), Image.NEAREST)
        sizes.setdefault((image.height, image.width), image_path.name)
        xs.append(np.asarray(image, "uint8"))
        ys.append(np.asarray(mask))
    if len(sizes) > 1:
        listed = ", ".join(f"{_hw(s)} ({n})" for s, n in list(sizes.items())[:4])
        raise DataError(f"The images have different sizes: {listed}. Pass image_size=(H, W) "
                        "to resize them (images bilinear, masks nearest).")
    y = np.stack(ys)
    if y.dtype != np.uint8 and y.size and y.min() >= 0 and y.max() <= 255:
        y = y.astype("uint8")
    return np.stack(xs), y


def _read_class_file(root):
    """Names (and colours) per id from `classes.txt` (a name a line) or `classes.json`."""
    txt, js = root / "classes.txt", root / "classes.json"
    if js.is_file():
        try:
            spec = json.loads(js.read_text())
        except ValueError as e:
            raise DataError(f"'{js}' is not valid JSON ({e}).") from e
        if isinstance(spec, dict) and "names" in spec:
            return [str(n) for n in spec["names"]], spec.get("colors")
        if isinstance(spec, dict):  # {"0": "sky", "1": "road"}
            try:
                ids = sorted(int(k) for k in spec)
            except ValueError as e:
                raise DataError(f"'{js}': keys must be class ids, got {list(spec)[:5]}.") from e
            if ids != list(range(len(ids))):
                raise DataError(f"'{js}' must name the ids 0..{len(ids) - 1}, got {ids[:10]}.")
            return [str(spec[str(i)] if str(i) in spec else spec[i]) for i in ids], None
        if isinstance(spec, list) and all(isinstance(s, dict) for s in spec):
            names = [str(s.get("name", i)) for i, s in enumerate(spec)]
            colors = [s.get("color") for s in spec]
            return names, (colors if all(c is not None for c in colors) else None)
        if isinstance(spec, list):
            return [str(s) for s in spec], None
        raise DataError(f"'{js}' must be a list of names, a list of {{\"name\", \"color\"}} "
                        "objects, or an {id: name} object.")
    if txt.is_file():
        return [line.strip() for line in txt.read_text().splitlines() if line.strip()], None
    return None, None


def load_segmentation_folder(path, image_size=None, test_fraction=0.2, seed=0,
                             ignore_label=255, class_names=None):
    """Loads a folder of images and class-id mask PNGs into `Splits`.

    Layouts: `root/images/*.{jpg,png,...}` with `root/masks/*.png` (split here into train and
    test: `test_fraction` of the images, seeded), or `root/train/{images,masks}/` with
    `root/test/{images,masks}/` (or `val/`). A mask pairs with the image of the same file
    stem (`images/0001.jpg` <-> `masks/0001.png`; `masks/0001_mask.png`, `_L`, `_label`,
    `_gt` are accepted too). Masks are single-channel PNGs whose pixel values are class ids
    (mode 'L', or 'P' as in Pascal VOC, or 16-bit). Colour-coded RGB masks are mapped to ids
    when `classes.json` gives each class's colour; otherwise they are refused.

    `root/classes.txt` (one name a line, line i = id i) or `root/classes.json` (a list of
    names, a list of `{"name": ..., "color": [r, g, b]}`, or `{"0": name, ...}`) names the
    ids; without one, the ids are named "0", "1", ...

    Args:
        path: the root folder.
        image_size: `(H, W)` to resize to (images bilinear, masks nearest neighbour, so no
            interpolated ids), or None to keep the size (all images must then share it).
        test_fraction, seed: the split when there is no `test/` folder; the train order is
            shuffled with `seed`.
        ignore_label: id of pixels that belong to no class (default 255), None, or "auto"
            (as in `load_segmentation_npz`, which also says how an ignore id that names a
            class is handled).
        class_names: names per id, overriding the class file.

    Returns:
        `Splits` as `load_segmentation_npz` returns (masks `(N, H, W)`, uint8 when ids fit).

    Example:

    >>> # root/images/a.jpg, root/masks/a.png (ids 0, 1, 2 and 255), ...
    >>> splits = tfkd.data.load_segmentation_folder("root", image_size=(64, 64))
    >>> splits.num_classes, splits.ignore_label
    (3, 255)
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder.")
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
    raw_names, raw_colors = _read_class_file(root)
    if class_names is not None:
        raw_names = list(class_names)
    if raw_colors is not None:
        raw_colors = np.asarray(raw_colors, "uint8").reshape(-1, 3)
    val = None
    if (root / "images").is_dir() and (root / "masks").is_dir():
        data = _read_pairs(_pairs(root), image_size, raw_colors)
        train, test = _split(data, test_fraction, seed)
    elif (root / "train" / "images").is_dir():
        train = _read_pairs(_pairs(root / "train"), image_size, raw_colors)
        test_root = next((root / n for n in ("test", "val", "validation")
                          if (root / n / "images").is_dir()), None)
        if test_root is None:
            train, test = _split(train, test_fraction, seed)
        else:
            test = _read_pairs(_pairs(test_root), image_size, raw_colors)
            if test_root.name == "test" and (root / "val" / "images").is_dir():
                val = _read_pairs(_pairs(root / "val"), image_size, raw_colors)
            if test[0].shape[1:3] != train[0].shape[1:3]:
                raise DataError(f"The train images are {_hw(train[0].shape[1:3])} but the "
                                f"{test_root.name} images {_hw(test[0].shape[1:3])}: pass "
                                "image_size=(H, W).")
    else:
        raise DataError(
            f"'{root}' has neither images/ + masks/ nor train/images/ + train/masks/. "
            "Expected 'root/images/<name>.jpg' with 'root/masks/<name>.png' (class ids), or "
            "'root/{train,test}/{images,masks}/'.")
    splits = [s for s in (train, val, test) if s is not None]
    class_names, class_colors, ignore_color, ignore_label, remap = _resolve_classes(
        [s[1] for s in splits], raw_names, raw_colors, ignore_label, f"'{root}'")
    checked = []
    for name, split in zip(("train", "val", "test"), (train, val, test)):
        if split is None:
            checked.append(None)
            continue
        x, y = split[0], _apply_remap(split[1], remap)
        checked.append((x, check_masks(x, y, len(class_names), ignore_label,
                                       what=f"{name} masks of '{root}'")))
    train, val, test = checked
    order = np.random.default_rng(seed).permutation(len(train[0]))
    return Splits(train=(train[0][order], train[1][order]), test=test, val=val,
                  class_names=class_names, source=str(root), ignore_label=ignore_label,
                  class_colors=class_colors, ignore_color=ignore_color)


def _split(data, test_fraction, seed):
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    x, y = data
    if len(x) < 2:
        raise DataError(f"Only {len(x)} image: a train/test split needs at least 2.")
    n_test = min(len(x) - 1, max(1, int(round(len(x) * test_fraction))))
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


# -- tf.data --------------------------------------------------------------------------------
def segmentation_augmentation(flip=True, zoom=(-0.3, 0.1), translate=0.1, fill_mode="constant",
                              seed=None):
    """The default mask-aware augmentation: random horizontal flip and random scale-crop.

    A `keras.Sequential` of Keras 3 core layers, called on `{"images": ...,
    "segmentation_masks": ...}`: `RandomFlip("horizontal")`, `RandomZoom(zoom)` (the same
    factor for height and width, so the aspect ratio is kept; negative = zoom in), and
    `RandomTranslation(translate, translate)`; zoom and shift together give a random scale
    and a random crop position. Each layer draws one transform per sample and applies it to
    the image (bilinear) and to its mask (nearest neighbour: ids stay ids), as verified in
    tests. With `fill_mode="constant"` the pixels a zoom-out or shift brings in are padding:
    the images get 0 there and `segmentation_dataset` gives the masks the ignore label (Keras
    would give them the image fill value 0, i.e. class 0). Use `fill_mode="reflect"` when
    there is no ignore label.

    Example:

    >>> import numpy as np, tfkd
    >>> aug = tfkd.data.segmentation_augmentation(seed=0)
    >>> out = aug({"images": np.zeros((2, 8, 8, 3), "float32"),
    ...            "segmentation_masks": np.ones((2, 8, 8, 1), "float32")}, training=True)
    >>> tuple(out["segmentation_masks"].shape)
    (2, 8, 8, 1)
    """
    import keras

    def layer_seed(i):
        return None if seed is None else int(seed) + i

    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=layer_seed(0)))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode=fill_mode,
                                              interpolation="bilinear", seed=layer_seed(1)))
    if translate:
        layers.append(keras.layers.RandomTranslation(translate, translate, fill_mode=fill_mode,
                                                     interpolation="bilinear",
                                                     seed=layer_seed(2)))
    return keras.Sequential(layers, name="segmentation_augmentation")


# Two constant planes travel with the masks through the augmentation. A transform copies or
# reflects them where it moves real pixels and writes its fill value where it pads; no fill
# value equals both 1 and 2, so "plane 1 == 1 and plane 2 == 2" marks exactly the real pixels.
_PLANES = (1.0, 2.0)


def _augment_batch(augment, images, masks, weights, ignore_label):
    """Runs `augment` on a batch; returns images, int32 masks (padding = ignore), weights.

    Keras' augmentation layers move masks with nearest neighbour but fill the padding they
    create with the *image's* fill value (0: a valid class id); this recovers the padding from
    the two constant planes and gives it the ignore label (and weight 0).
    """
    import keras
    import tensorflow as tf

    planes = [tf.cast(masks, "float32")[..., None]]
    if weights is not None:
        planes.append(tf.cast(weights, "float32")[..., None])
    ones = tf.ones_like(planes[0])
    planes += [ones * _PLANES[0], ones * _PLANES[1]]
    data = {"images": images, "segmentation_masks": tf.concat(planes, axis=-1)}
    out = augment(data, training=True) if isinstance(augment, keras.layers.Layer) else \
        augment(data)
    if not isinstance(out, dict) or "images" not in out or "segmentation_masks" not in out:
        raise DataError(
            "segmentation_dataset: `augment` must return a dict with 'images' and "
            f"'segmentation_masks' (as Keras' augmentation layers do); got {type(out).__name__}"
            f"{sorted(out) if isinstance(out, dict) else ''}.")
    out_images = tf.convert_to_tensor(out["images"])
    packed = tf.cast(out["segmentation_masks"], "float32")
    ids = packed[..., 0]
    valid = tf.logical_and(tf.equal(packed[..., -2], _PLANES[0]),
                           tf.equal(packed[..., -1], _PLANES[1]))
    return out_images, ids, valid, (packed[..., 1] if weights is not None else None)


def _probe_augmentation(augment, x, y, w, ignore_label):
    """Runs `augment` once, eagerly, on a few samples and checks what it did to the masks."""
    import tensorflow as tf

    images, ids, valid, _ = _augment_batch(
        augment, tf.constant(x, "float32"), tf.constant(y), None if w is None else
        tf.constant(w, "float32"), ignore_label)
    images, ids, valid = images.numpy(), ids.numpy(), valid.numpy()
    if images.shape[:3] != ids.shape[:3]:
        raise DataError(
            f"segmentation_dataset: `augment` returned images {images.shape[1:3]} but masks "
            f"{ids.shape[1:3]} (HxW): it must apply the same geometric transform to both.")
    real = ids[valid]
    frac = real[np.mod(real, 1) != 0]
    if frac.size:
        raise DataError(
            "segmentation_dataset: `augment` interpolated the masks (values like "
            f"{np.unique(frac)[:4].round(3).tolist()} are not class ids). Masks must move with "
            "nearest neighbour. Keras' Random* layers do this, except keras.layers.RandomCrop "
            "when the crop is not smaller than the image: it then resizes masks bilinearly.")
    new = sorted(set(np.unique(real).astype(int).tolist()) - set(np.unique(y).tolist()))
    if new:
        raise DataError(f"segmentation_dataset: `augment` created mask ids {new[:10]} that "
                        "were not in the input masks; it must only move mask pixels.")
    if ignore_label is None and not valid.all():
        raise DataError(
            "segmentation_dataset: `augment` pads the masks (a zoom-out, shift or rotation "
            "brings in pixels from outside the image) but ignore_label is None, so the padding "
            "has no label. Pass ignore_label=<id the loss ignores> (e.g. 255, with "
            "SparseCategoricalCrossentropy(ignore_class=255)), or use fill_mode='reflect'.")


def segmentation_dataset(x, y, batch_size=32, sample_weight=None, augment=None, shuffle=False,
                         seed=None, ignore_label=None, num_classes=None, dtype="float32"):
    """Batches images and masks as a `tf.data.Dataset` for `fit` / `tfkd.Distiller.fit`.

    Batches are `(images (B, H, W, C) float32, masks (B, H, W) int32)`, or with
    `sample_weight` `(..., weights (B, H, W) float32)`: per-pixel weights, the form Keras'
    losses take for dense targets (a per-image weight `(N,)` is spread over its pixels;
    `(N, H, W)` maps are moved with their masks). Pixel values are not rescaled: put the
    model's preprocessing (e.g. `keras.layers.Rescaling(1 / 255)`) in the model.

    Args:
        x, y: images `(N, H, W, C)` and masks `(N, H, W)` or `(N, H, W, 1)` of class ids.
        batch_size: samples per batch (the last batch may be smaller).
        sample_weight: None, `(N,)` per image, or `(N, H, W)` per pixel.
        augment: None/False, True (the default `segmentation_augmentation(seed=seed)`; with
            `ignore_label=None` it reflects instead of padding), or a callable / Keras layer
            taking and returning `{"images": ..., "segmentation_masks": ...}` (Keras 3's
            augmentation layers and `keras.Sequential` of them do). It runs per batch in the
            pipeline, so the Distiller's teacher and student see the same augmented view. It
            is tried once on a few samples before the dataset is returned: interpolated ids
            or a size change between images and masks raise `DataError` then. Pixels that
            the augmentation pads get `ignore_label` (and weight 0).
        shuffle, seed: reshuffle the samples every epoch (seeded); `seed` also seeds the
            default augmentation.
        ignore_label: the id of pixels that belong to no class (padding gets it).
        num_classes: when given, the masks are checked with `check_masks` first.
        dtype: the images' dtype.

    Returns:
        A `tf.data.Dataset` of `(images, masks[, weights])` batches.

    Example:

    >>> import keras, numpy as np, tfkd
    >>> x = np.random.randint(0, 255, (8, 16, 16, 3), "uint8")
    >>> y = np.random.randint(0, 3, (8, 16, 16), "uint8")
    >>> ds = tfkd.data.segmentation_dataset(x, y, 4, augment=True, shuffle=True, seed=0,
    ...                                     ignore_label=255, num_classes=3)
    >>> images, masks = next(iter(ds))
    >>> images.shape, masks.dtype
    (TensorShape([4, 16, 16, 3]), tf.int32)
    """
    import tensorflow as tf

    x = _as_images(x, "segmentation_dataset: x")
    y = check_masks(x, y, num_classes, ignore_label)
    if y.dtype != np.uint8:
        y = y.astype("int32")
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight, "float32")
        if w.ndim == 4 and w.shape[-1] == 1:
            w = w[..., 0]
        if w.ndim == 2 and w.shape[1] == 1:
            w = w[:, 0]
        if w.shape not in ((len(y),), y.shape):
            raise DataError(
                f"sample_weight has shape {w.shape}; it must be per image ({len(y)},) or per "
                f"pixel {y.shape}.")
        if w.ndim == 1:
            w = np.broadcast_to(w[:, None, None], y.shape).astype("float32")
    if augment is True:
        augment = segmentation_augmentation(
            seed=seed, fill_mode="constant" if ignore_label is not None else "reflect")
    elif augment is False:
        augment = None
    if augment is not None:
        if not callable(augment):
            raise TypeError(f"segmentation_dataset: `augment` must be True, None or a callable "
                            f"(e.g. a Keras augmentation layer); got {augment!r}.")
        k = min(len(x), 8)
        _probe_augmentation(augment, x[:k], y[:k], None if w is None else w[:k], ignore_label)
    fill = -1 if ignore_label is None else int(ignore_label)

    parts = (x, y) + ((w,) if w is not None else ())
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def prepare(images, masks, weights=None):
        images = tf.cast(images, "float32")
        if augment is None:
            out = (tf.cast(images, dtype), tf.cast(masks, "int32"))
            return out + ((weights,) if weights is not None else ())
        images, ids, valid, weights = _augment_batch(augment, images, masks, weights,
                                                     ignore_label)
        checks = [tf.debugging.assert_equal(
            tf.boolean_mask(ids, valid), tf.round(tf.boolean_mask(ids, valid)),
            message="augment interpolated the masks: they must move with nearest neighbour")]
        if ignore_label is None:
            checks.append(tf.debugging.assert_equal(
                tf.reduce_all(valid), True,
                message="augment padded the masks but ignore_label is None"))
        with tf.control_dependencies(checks):
            masks = tf.where(valid, tf.cast(tf.round(ids), "int32"), fill)
        out = (tf.cast(images, dtype), masks)
        if weights is not None:
            out += (tf.where(valid, weights, 0.0),)
        return out

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
