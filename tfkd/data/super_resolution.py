"""Super-resolution inputs: HR image folders, bicubic LR inputs, patch pipelines for `fit`.

Conventions shared by all SR code in tfkd: a super-resolution model takes float pixels in
[0, 255] of shape (N, h, w, C), C = 1 (the Y channel, mode "y") or 3 (mode "rgb"), spatial
dims of any size, and returns float pixels on the same scale, (N, h * scale, w * scale, C),
unclipped (scoring clips and rounds: `tfkd.tflite.sr_scores`). Y is ITU-R BT.601 as
MATLAB's `rgb2ycbcr` gives it (`rgb_to_y`, the one implementation, in `tfkd.tflite`), the Y
on which SR papers report PSNR / SSIM.

- `load_sr_folder(path, scale, mode)`: the HR images of a folder (Set5, Set14, T91, DIV2K...),
  float32 (H, W, C) in [0, 255], each cropped to a multiple of `scale` (top-left).
- `downscale(hr, scale)`: the LR input, bicubic with antialiasing (`tf.image.resize(...,
  "bicubic", antialias=True)`, close to MATLAB's `imresize` that the benchmarks were made
  with), clipped and rounded to whole pixel values: LR inputs are images.
- `sr_pairs(hr_images, scale)`: (lr, hr) pairs of whole images, for
  `tfkd.tflite.evaluate(path, pairs, metrics=("psnr", "ssim"))` and `sr_scores`.
- `sr_dataset(hr_images, scale, patch_size)`: a `tf.data.Dataset` of (lr_patch, hr_patch)
  batches for `model.fit` / `tfkd.Distiller.fit`: random HR crops, flips and 90-degree
  rotations, downscaled in the pipeline; reproducible with a seed.

Example (a synthetic folder; Set5 or T91 work the same way):

    >>> import os, tempfile, numpy as np, tensorflow as tf, tfkd
    >>> from tfkd.data.super_resolution import load_sr_folder, sr_dataset, sr_pairs
    >>> folder = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> for i, (h, w) in enumerate([(50, 41), (64, 64)]):
    ...     png = tf.io.encode_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    ...     tf.io.write_file(os.path.join(folder, f"img{i}.png"), png)
    >>> hr = load_sr_folder(folder, scale=2, mode="y")
    >>> [x.shape for x in hr]
    [(50, 40, 1), (64, 64, 1)]
    >>> lr, hr0 = sr_pairs(hr, 2)[0]
    >>> lr.shape
    (25, 20, 1)
    >>> ds = sr_dataset(folder, 2, patch_size=32, batch_size=4, seed=0)
    >>> x, y = next(iter(ds))
    >>> tuple(x.shape), tuple(y.shape)
    ((4, 16, 16, 1), (4, 32, 32, 1))
"""
from __future__ import annotations

import numbers
import os
import pathlib

import numpy as np

from tfkd.data import DataError
from tfkd.tflite.errors import TFLiteError
from tfkd.tflite.image_quality import as_images, rgb_to_y

SR_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
MODES = ("y", "rgb")
DEFAULT_PATCHES_PER_IMAGE = 16


class SRDataError(DataError):
    """Super-resolution data that cannot be used as given; the message says what to change."""


__all__ = ["load_sr_folder", "downscale", "sr_pairs", "sr_dataset", "rgb_to_y", "SRDataError",
           "SR_EXTENSIONS", "MODES"]


# -- checks -------------------------------------------------------------------------------
def _check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 2:
        raise SRDataError(
            f"scale must be an integer >= 2 (the upscaling factor: 2, 3, 4...); got {scale!r}. "
            "Pass scale=None to load_sr_folder to keep the images uncropped.")
    return int(scale)


def _check_mode(mode):
    if mode not in MODES:
        raise SRDataError(
            f"mode={mode!r} is not a super-resolution mode: use 'y' (the Y channel, one "
            "channel, as SR papers train and score) or 'rgb' (three channels).")
    return mode


def _hw(shape):
    return f"{shape[0]}x{shape[1]}"


def _as_hr_list(hr_images, what="hr_images"):
    """A list of float32 (H, W, C) arrays from a list of images or an (N, H, W, C) stack."""
    try:
        images = as_images(hr_images, what)
    except TFLiteError as e:  # the same check as the scorer's, raised as a data error
        raise SRDataError(str(e)) from None
    if not images:
        raise SRDataError(f"{what} is empty: pass at least one HR image (or a folder of them).")
    return images


def _named_images(hr_images, scale, mode):
    """(names, images) of a folder path (read with `mode`, mod-cropped to `scale` if given)
    or of a list / stack of HR images (named by their index, for the error messages)."""
    if isinstance(hr_images, (str, os.PathLike)):
        return _read_sr_folder(hr_images, scale, mode)
    images = _as_hr_list(hr_images)
    return [f"hr_images[{i}]" for i in range(len(images))], images


# -- loading ------------------------------------------------------------------------------
def _read_sr_folder(path, scale=None, mode="y"):
    """(file names, images) of `load_sr_folder`."""
    import tensorflow as tf

    mode = _check_mode(mode)
    scale = None if scale is None else _check_scale(scale)
    root = pathlib.Path(path)
    if not root.is_dir():
        raise SRDataError(f"'{root}' is not a folder: pass the folder that holds the HR images "
                          "(e.g. .../sr/Set5).")
    files = sorted(p for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in SR_EXTENSIONS)
    if not files:
        subfolders = sorted(p.name for p in root.iterdir() if p.is_dir())
        hint = (f" It has the sub-folders {subfolders[:8]}: pass one of them."
                if subfolders else "")
        raise SRDataError(
            f"No images ({', '.join(SR_EXTENSIONS)}) in '{root}'. Put the HR images directly "
            f"in the folder, or point to the folder that holds them.{hint}")
    names, images = [], []
    for f in files:
        try:
            # channels=3: a grayscale file (Set14's bridge) becomes RGB, so every image of a
            # set has the same channels before the Y conversion.
            rgb = tf.io.decode_image(tf.io.read_file(str(f)), channels=3,
                                     expand_animations=False).numpy()
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            reason = (getattr(e, "message", "") or str(e)).strip().splitlines()
            reason = reason[0].rsplit(": ", 1)[-1].strip().rstrip(".") if reason else "corrupt"
            raise SRDataError(
                f"Cannot decode the image '{f}' ({reason}). Remove it from the folder, or "
                "re-save it as a valid PNG / JPEG / BMP.") from e
        image = rgb_to_y(rgb) if mode == "y" else rgb.astype(np.float32)
        if scale is not None:
            h, w = image.shape[:2]
            if h < scale or w < scale:
                raise SRDataError(f"'{f.name}' is {_hw(image.shape)}, smaller than scale={scale}: "
                                  "remove it or use a smaller scale.")
            image = image[:h - h % scale, :w - w % scale]
        names.append(f.name)
        images.append(np.ascontiguousarray(image, np.float32))
    return names, images


def load_sr_folder(path, scale=None, mode="y"):
    """The HR images of a folder, sorted by file name, as float32 (H, W, C) in [0, 255].

    Args:
      path: a folder of PNG / JPEG / BMP files (sub-folders are not read).
      scale: None (full size), or the upscaling factor: each image is cropped to a multiple
        of it, top-left (`img[:H - H % s, :W - W % s]`, the benchmarks' "mod crop"), so that
        its LR image is exactly H/s x W/s.
      mode: "y" (C = 1: the BT.601 Y of `rgb_to_y`, unrounded) or "rgb" (C = 3). Grayscale
        files become RGB first.

    Returns:
      a list of arrays (sizes differ between images).

    Raises:
      SRDataError: not a folder, no images in it, a file that does not decode, an unknown
        mode, a scale that is not an integer >= 2.
    """
    return _read_sr_folder(path, scale, mode)[1]


# -- LR images ----------------------------------------------------------------------------
def _downscale_tf(hr, scale):
    """Bicubic, antialiased, clipped and rounded, on a tensor whose H, W divide by scale."""
    import tensorflow as tf

    size = tf.shape(hr)[-3:-1] // scale
    lr = tf.image.resize(tf.cast(hr, tf.float32), size, method="bicubic", antialias=True)
    return tf.round(tf.clip_by_value(lr, 0.0, 255.0))


def downscale(hr, scale):
    """The LR image of an HR image: bicubic with antialiasing, to H/s x W/s.

    `tf.image.resize(..., "bicubic", antialias=True)` (a bicubic kernel stretched by the
    scale, as MATLAB's `imresize` does when it shrinks), clipped to [0, 255] and rounded:
    LR inputs are images, whole pixel values.

    Args:
      hr: one image (H, W, C) or a stack (N, H, W, C), numpy or a tensor; H and W must be
        multiples of `scale`.
      scale: integer >= 2.

    Returns:
      float32 (H/s, W/s, C) (or the stack): numpy for numpy input, a tensor for a tensor.

    Raises:
      SRDataError: a size that `scale` does not divide, a bad scale or shape.
    """
    import tensorflow as tf

    scale = _check_scale(scale)
    is_tensor = tf.is_tensor(hr)
    shape = tuple(hr.shape)
    if len(shape) not in (3, 4):
        raise SRDataError(f"downscale takes an image (H, W, C) or a stack (N, H, W, C); got "
                          f"shape {shape}.")
    h, w = shape[-3], shape[-2]
    if h is not None and w is not None and (h % scale or w % scale):
        raise SRDataError(
            f"An HR image of {h}x{w} cannot be downscaled by {scale}: crop it to a multiple "
            f"of the scale first, img[:H - H % {scale}, :W - W % {scale}] (-> "
            f"{h - h % scale}x{w - w % scale}), or load it with load_sr_folder(..., "
            f"scale={scale}).")
    lr = _downscale_tf(hr if is_tensor else np.asarray(hr, np.float32), scale)
    return lr if is_tensor else lr.numpy()


def sr_pairs(hr_images, scale, mode="y"):
    """(lr, hr) pairs of whole images for evaluation, LR made by `downscale`.

    `hr_images`: a list of HR images (H, W, C) whose sizes divide by `scale` (what
    `load_sr_folder(..., scale=scale)` returns), an (N, H, W, C) stack, or a folder path
    (loaded with `load_sr_folder(path, scale, mode)`, so mod-cropped). Returns a list of
    float32 (lr (H/s, W/s, C), hr (H, W, C)) tuples: the data of `tfkd.tflite.evaluate(...,
    metrics=("psnr", "ssim"))`.
    """
    scale = _check_scale(scale)
    names, images = _named_images(hr_images, scale, mode)
    pairs = []
    for name, hr in zip(names, images):
        try:
            pairs.append((downscale(hr, scale), hr))
        except SRDataError as e:
            raise SRDataError(f"{name}: {e}") from None
    return pairs


# -- training pipeline --------------------------------------------------------------------
def _pack(images):
    """The images as one flat tensor with (offset, height, width) per image: a tf.data map
    can then gather a crop of any image, whatever the sizes. uint8 when every pixel is a
    whole value in [0, 255] (RGB files: a quarter of the memory), float32 otherwise."""
    whole = all(np.array_equal(x, np.round(x)) and x.min() >= 0 and x.max() <= 255
                for x in images)
    dtype = np.uint8 if whole else np.float32
    flat = np.concatenate([x.reshape(-1) for x in images]).astype(dtype)
    sizes = np.array([x.size for x in images], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    shapes = np.array([x.shape[:2] for x in images], np.int64)
    return flat, offsets, shapes


def sr_dataset(hr_images, scale, patch_size=96, batch_size=16, augment=True, shuffle=True,
               seed=None, patches_per_image=DEFAULT_PATCHES_PER_IMAGE, mode="y"):
    """Batches of (LR patch, HR patch) for `model.fit` / `tfkd.Distiller.fit`.

    Every epoch takes `patches_per_image` random `patch_size` x `patch_size` HR crops of
    each image (new positions every epoch), flips them and rotates them by a multiple of 90
    degrees when `augment` (the 8 symmetries of the square, as EDSR trains), and downscales
    each crop in the pipeline (`downscale`: bicubic, antialiased, rounded).

    Args:
      hr_images: a list of HR images (H, W, C) in [0, 255] (sizes may differ), an (N, H, W,
        C) stack, or a folder path (`load_sr_folder(path, mode=mode)`).
      scale: integer >= 2.
      patch_size: the HR crop's side in pixels, a multiple of `scale` (the LR patch is
        patch_size / scale); every image must be at least that large.
      batch_size: patches per batch (the last batch of an epoch may be smaller).
      augment: random flips and 90-degree rotations.
      shuffle: reshuffle the patches' image order every epoch.
      seed: an int makes the whole stream (order, crops, augmentation, every epoch)
        reproducible; None: new randomness every run.
      patches_per_image: crops per image and epoch (default 16: T91 gives 1456 patches).
      mode: the channels of images read from a folder path ("y" or "rgb").

    Returns:
      a `tf.data.Dataset` of float32 `(lr (B, p/s, p/s, C), hr (B, p, p, C))`.

    Raises:
      SRDataError: a patch size that is not a multiple of the scale, an image smaller than
        the patch (named with its size), a bad scale, mode or count.
    """
    import tensorflow as tf

    scale = _check_scale(scale)
    names, images = _named_images(hr_images, None, mode)
    for arg, value in (("patch_size", patch_size), ("batch_size", batch_size),
                       ("patches_per_image", patches_per_image)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise SRDataError(f"{arg} must be a positive integer; got {value!r}.")
    p = int(patch_size)
    if p % scale:
        raise SRDataError(
            f"patch_size={p} is not a multiple of scale={scale}: the LR patch would not be "
            f"whole pixels. Use patch_size={max(scale, p - p % scale)} or "
            f"{p + scale - p % scale}.")
    channels = {x.shape[-1] for x in images}
    if len(channels) > 1:
        raise SRDataError(f"The HR images have different channel counts {sorted(channels)}: "
                          "convert them all to Y (rgb_to_y) or all to RGB.")
    small = [(n, x.shape) for n, x in zip(names, images) if min(x.shape[:2]) < p]
    if small:
        listed = ", ".join(f"{n} ({_hw(s)})" for n, s in small[:5])
        smallest = min(min(s[:2]) for _, s in small)
        raise SRDataError(
            f"{len(small)} image(s) are smaller than patch_size={p}: {listed}"
            f"{' ...' if len(small) > 5 else ''}. Use a smaller patch_size (at most "
            f"{smallest - smallest % scale}), or drop those images.")

    flat, offsets, shapes = _pack(images)
    c = int(next(iter(channels)))
    n = len(images)
    flat, offsets, shapes = tf.constant(flat), tf.constant(offsets), tf.constant(shapes)
    grid = np.arange(p, dtype=np.int64)
    rows = tf.constant(grid[:, None, None])
    cols = tf.constant(grid[None, :, None])
    chans = tf.constant(np.arange(c, dtype=np.int64)[None, None, :])

    def crop(index, randomness):
        i = index % n
        h, w = shapes[i][0], shapes[i][1]
        # A stateless draw keyed by the element's random number: the stream of those
        # numbers (Dataset.random below) is what the seed fixes, and it changes every epoch.
        r = tf.random.stateless_uniform([4], seed=tf.stack([randomness, index]), minval=0,
                                        maxval=1 << 30, dtype=tf.int64)
        y0, x0 = r[0] % (h - p + 1), r[1] % (w - p + 1)
        where = offsets[i] + ((y0 + rows) * w + (x0 + cols)) * c + chans
        patch = tf.reshape(tf.cast(tf.gather(flat, where), tf.float32), (p, p, c))
        if augment:
            patch = tf.cond(r[2] % 2 == 1, lambda: tf.reverse(patch, axis=[1]), lambda: patch)
            patch = tf.image.rot90(patch, tf.cast(r[3] % 4, tf.int32))
        return patch

    def pair(hr):
        lr = _downscale_tf(hr, scale)
        return tf.ensure_shape(lr, (None, p // scale, p // scale, c)), \
            tf.ensure_shape(hr, (None, p, p, c))

    count = n * int(patches_per_image)
    index = tf.data.Dataset.range(count)
    if shuffle:
        index = index.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    randomness = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip(index, randomness)
    # Deterministic map order: the seed must fix which crop lands in which batch.
    ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(int(batch_size)).map(pair, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
