"""Image-quality scores of super-resolution outputs: PSNR and SSIM as SR papers report them.

Conventions (shared by `tfkd.data.super_resolution` and `evaluate(..., metrics=("psnr",
"ssim"))`): pixels are floats in [0, 255], images (H, W, C) with C = 1 (the Y channel) or 3
(RGB). A super-resolution model returns pixels on that scale, unclipped; scoring clips them
to [0, 255] and rounds them to whole values, what the papers' code does when it turns an
output into a uint8 image. Per image, `sr_scores`:

1. clips and rounds the SR image (the HR image is taken as given);
2. with `y_channel=True`, turns RGB images into their Y channel (`rgb_to_y`: ITU-R BT.601
   as MATLAB's `rgb2ycbcr` gives it, the Y of the SR literature);
3. shaves `scale` pixels off every border (the border of an upscaled image has no
   neighbours to be predicted from, and papers leave it out);
4. scores with `tf.image.psnr(max_val=255)` and `tf.image.ssim(max_val=255)` (11x11
   Gaussian window, sigma 1.5, k1 0.01, k2 0.03: Wang et al.'s SSIM).

Images of different sizes are scored one by one; "psnr" and "ssim" are means over images
(the per-image mean the papers' tables give, not the PSNR of a pooled MSE).

`bicubic_upscale(lr, scale)` is the reference row of every SR table; `super_resolve` (in
`tfkd.tflite.evaluate`, beside the runner it uses) runs a Keras model or a `.tflite` on one
whole image, tiled where the file's input has a fixed size; `tiles` is the tiling it uses.

Example:

    >>> import numpy as np, tfkd.tflite as tfl
    >>> rng = np.random.default_rng(0)
    >>> hr = rng.integers(0, 256, (2, 32, 32, 3)).astype("float32")
    >>> lr = hr[:, ::2, ::2]                                   # a crude 2x downscale
    >>> s = tfl.sr_scores(hr, tfl.bicubic_upscale(lr, 2), scale=2)
    >>> sorted(s), len(s["per_image"]), 0 < s["psnr"] < 40, -1 < s["ssim"] < 1
    (['per_image', 'psnr', 'ssim'], 2, True, True)
    >>> tfl.sr_scores(hr, hr, scale=2)["ssim"]
    1.0
    >>> float(tfl.rgb_to_y(np.array([255.0, 255.0, 255.0]))[0])   # white: Y = 235
    235.0
"""
from __future__ import annotations

import numbers

import numpy as np

from .data import _elements, _split, _to_numpy
from .errors import EmptyDataError, RepresentativeDataError, TFLiteError

# Metric names `evaluate` routes to the image-quality scores (image-to-image files).
SR_METRICS = ("psnr", "ssim")

# ITU-R BT.601 luma for R, G, B in [0, 255], as MATLAB's rgb2ycbcr computes it: 219 levels of
# Y in [16, 235] ("studio swing"), the Y on which SR papers report PSNR / SSIM.
_Y_OFFSET = 16.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)
# tf.image.ssim's Gaussian window is 11 pixels: a smaller (shaved) image cannot be scored.
_SSIM_WINDOW = 11


def rgb_to_y(images):
    """The Y channel of RGB pixels in [0, 255]: ITU-R BT.601, as MATLAB's `rgb2ycbcr`.

    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, in [16, 235]. This is the Y that SR
    papers score on (their evaluation code is MATLAB's, or a port of it). It is *not*
    `tf.image.rgb_to_yuv`, whose Y is full range (0.299 R + 0.587 G + 0.114 B, in [0, 255]
    for [0, 255] input): its PSNR differs, by the 219/255 range factor, from the published
    figures, so it would not compare with them.

    Args:
      images: RGB pixels (..., 3), numpy (any numeric dtype) or a tensor.

    Returns:
      Y pixels (..., 1), unrounded: float64 for float64 numpy input, else float32; a tensor
      for a tensor.
    """
    import tensorflow as tf

    if tf.is_tensor(images):
        if images.shape.rank is not None and (images.shape.rank == 0 or
                                              images.shape[-1] not in (None, 3)):
            raise TFLiteError(f"rgb_to_y takes RGB pixels (..., 3); got shape {images.shape}.")
        dtype = images.dtype if images.dtype in (tf.float32, tf.float64) else tf.float32
        weights = tf.constant(np.asarray(_Y_WEIGHTS) / 255.0, dtype)
        y = tf.tensordot(tf.cast(images, dtype), weights, axes=[[-1], [0]]) + _Y_OFFSET
        return y[..., None]
    x = np.asarray(images)
    if x.ndim == 0 or x.shape[-1] != 3 or x.dtype.kind not in "biuf":
        raise TFLiteError(
            f"rgb_to_y takes numeric RGB pixels (..., 3); got {x.dtype} of shape {x.shape}.")
    out = np.float64 if x.dtype == np.float64 else np.float32
    # float64 arithmetic, one rounding to the output dtype at the end.
    y = _Y_OFFSET + x.astype(np.float64) @ (np.asarray(_Y_WEIGHTS) / 255.0)
    return y[..., None].astype(out)


def check_scale(scale, what="scale", minimum=1):
    """`scale` as an int >= minimum (numpy integers accepted), else TFLiteError."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < minimum:
        raise TFLiteError(f"{what} must be an integer >= {minimum} (the upscaling factor, e.g. "
                          f"2, 3 or 4); got {scale!r}.")
    return int(scale)


def as_image(x, what):
    """One image as a float32 (H, W, C) array (a (H, W) grayscale image gets C = 1)."""
    x = _to_numpy(x)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 3) or x.dtype.kind not in "biuf":
        raise RepresentativeDataError(
            f"{what} must be one image (H, W, C) with C = 1 (Y) or 3 (RGB) channels of "
            f"numeric pixels in [0, 255]; got {x.dtype} of shape {x.shape}.")
    return x.astype(np.float32)


def as_images(images, what):
    """A list of float32 (H, W, C) images from a list / tuple of images, one image, or an
    (N, H, W, C) stack (`as_image` checks each; `tfkd.data.super_resolution` uses it too)."""
    if hasattr(images, "shape") and len(images.shape) == 4:
        images = [images[i] for i in range(images.shape[0])]
    if isinstance(images, np.ndarray) or hasattr(images, "numpy"):
        images = [images]  # a single (H, W[, C]) image
    return [as_image(x, f"{what} {i}") for i, x in enumerate(images)]


def pair_scores(hr, sr, scale, y_channel=True, index=0):
    """{"psnr", "ssim"} of one SR image against its HR image (the steps of the module
    docstring); `index` names the image in errors."""
    import tensorflow as tf

    hr = as_image(hr, f"HR image {index}")
    sr = np.clip(np.round(as_image(sr, f"SR image {index}")), 0.0, 255.0)
    if y_channel:
        hr = rgb_to_y(hr) if hr.shape[-1] == 3 else hr
        sr = rgb_to_y(sr) if sr.shape[-1] == 3 else sr
    if hr.shape != sr.shape:
        hint = (" With y_channel=False an RGB image is scored against an RGB one: pass "
                "y_channel=True to compare a Y output with an RGB HR image."
                if hr.shape[:2] == sr.shape[:2] else
                " Crop the HR image to a multiple of the scale (img[:H - H % s, :W - W % s]) "
                "before making its LR input, and upscale that LR image by the same scale.")
        raise RepresentativeDataError(
            f"SR image {index} has shape {sr.shape[:2] + (sr.shape[-1],)} but its HR image "
            f"{hr.shape}{' (after the Y conversion)' if y_channel else ''}: they must match "
            f"pixel for pixel.{hint}")
    s = scale
    if min(hr.shape[0], hr.shape[1]) - 2 * s < _SSIM_WINDOW:
        raise RepresentativeDataError(
            f"Image {index} is {hr.shape[0]}x{hr.shape[1]}: shaving {s} border pixels leaves "
            f"less than SSIM's {_SSIM_WINDOW}x{_SSIM_WINDOW} window. Score images of at least "
            f"{_SSIM_WINDOW + 2 * s} pixels a side.")
    hr, sr = hr[s:-s, s:-s], sr[s:-s, s:-s]
    psnr = float(tf.image.psnr(hr, sr, max_val=255.0).numpy())
    ssim = float(tf.image.ssim(hr, sr, max_val=255.0).numpy())
    return {"psnr": psnr, "ssim": ssim}


def summarize(per_image):
    """The means over images of a list of `pair_scores` (what the papers' tables give)."""
    if not per_image:
        raise EmptyDataError("No image to score: the data set is empty.")
    return {"psnr": float(np.mean([p["psnr"] for p in per_image])),
            "ssim": float(np.mean([p["ssim"] for p in per_image])),
            "per_image": list(per_image)}


def sr_scores(hr_images, sr_images, scale, y_channel=True) -> dict:
    """PSNR and SSIM (dB, [-1, 1]) of super-resolved images against their HR originals.

    Args:
      hr_images, sr_images: the same number of images, as lists (sizes may differ between
        images) or (N, H, W, C) stacks; pixels in [0, 255], C = 1 (Y) or 3 (RGB). The SR
        images are clipped to [0, 255] and rounded first.
      scale: the upscaling factor; `scale` border pixels are left out (papers' convention).
      y_channel: score the Y channel of RGB images (`rgb_to_y`), as papers do; a 1-channel
        image is taken as Y already. False: score the channels as they are.

    Returns:
      {"psnr": mean over images, "ssim": mean over images, "per_image": [{"psnr", "ssim"}
      per image, in order]}.

    Raises:
      RepresentativeDataError: images that do not match pixel for pixel, too small once
        shaved, or not images; EmptyDataError: no image; TFLiteError: a bad scale.
    """
    scale = check_scale(scale)
    hrs, srs = as_images(hr_images, "HR image"), as_images(sr_images, "SR image")
    if len(hrs) != len(srs):
        raise RepresentativeDataError(
            f"{len(hrs)} HR images but {len(srs)} SR images: give one SR image per HR image.")
    return summarize([pair_scores(h, s, scale, y_channel, index=i)
                      for i, (h, s) in enumerate(zip(hrs, srs))])


def bicubic_upscale(lr, scale):
    """Bicubic upscaling by `scale` (`tf.image.resize(..., "bicubic")`): the reference row.

    `lr`: one image (h, w, C) or a stack (N, h, w, C), pixels in [0, 255]. Returns float32
    (h * scale, w * scale, C) (or the stack), unclipped, like a model's output:
    `sr_scores` clips and rounds it.
    """
    import tensorflow as tf

    scale = check_scale(scale)
    x = np.asarray(_to_numpy(lr), np.float32)
    if x.ndim not in (3, 4):
        raise TFLiteError(f"bicubic_upscale takes an image (h, w, C) or a stack (N, h, w, C); "
                          f"got shape {x.shape}.")
    h, w = x.shape[-3:-1]
    return tf.image.resize(x, (h * scale, w * scale), method="bicubic").numpy()


def check_overlap(tile, overlap):
    """The overlap (LR pixels) of tiles of size `tile` (th, tw): the default is a quarter of
    the smaller side, at most 8; two overlaps must leave a core of at least one pixel."""
    if overlap is None:
        return min(8, min(tile) // 4)
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral) or overlap < 0:
        raise TFLiteError(f"overlap must be an integer >= 0 (LR pixels); got {overlap!r}.")
    if 2 * overlap >= min(tile):
        raise TFLiteError(
            f"overlap={overlap} leaves nothing of a {tile[0]}x{tile[1]} tile: each tile keeps "
            f"its centre, tile minus {overlap} pixels on every side. Use overlap < "
            f"{(min(tile) + 1) // 2}.")
    return int(overlap)


def tiles(run, image, tile, overlap=None):
    """Runs `run` on overlapping tiles of one LR image and stitches the centres.

    The image (h, w, C) is padded by reflection: `overlap` pixels on every side, and enough
    at the bottom and right to fill whole tiles. Tiles of `tile` (th, tw) pixels step by
    their core (th - 2 overlap, tw - 2 overlap); of each output tile only the core's
    upscaled pixels are kept, so every output pixel comes from a tile in which it had at
    least `overlap` LR pixels of real (or reflected) context on every side. When that covers
    the model's receptive field, the result is exactly the model's output on the
    reflection-padded image, with no seam. The scale is read from the first tile's output.

    Args:
      run: a function of one (th, tw, C) float32 tile -> its (th s, tw s, C') output.
      image: the LR image (h, w, C).
      tile: (th, tw) LR pixels; overlap: LR pixels of context kept on each side (default
        `check_overlap`'s).

    Returns:
      float32 (h s, w s, C').
    """
    th, tw = (int(t) for t in tile)
    o = check_overlap((th, tw), overlap)
    h, w = image.shape[:2]
    ch, cw = th - 2 * o, tw - 2 * o
    ny, nx = -(-h // ch), -(-w // cw)
    padded = np.pad(image, ((o, ny * ch - h + o), (o, nx * cw - w + o), (0, 0)),
                    mode="reflect")
    out, s = None, None
    for i in range(ny):
        for j in range(nx):
            y = np.asarray(run(padded[i * ch:i * ch + th, j * cw:j * cw + tw]))
            if out is None:
                s = y.shape[0] // th
                if y.ndim != 3 or s < 1 or y.shape[:2] != (th * s, tw * s):
                    raise TFLiteError(
                        f"A {th}x{tw} tile gave an output of shape {y.shape}: a "
                        "super-resolution model must return (th * s, tw * s, C) for some "
                        "integer scale s.")
                out = np.empty((ny * ch * s, nx * cw * s, y.shape[-1]), np.float32)
            out[i * ch * s:(i + 1) * ch * s, j * cw * s:(j + 1) * cw * s] = \
                y[o * s:(o + ch) * s, o * s:(o + cw) * s]
    return out[:h * s, :w * s]


def iter_sr_pairs(data, max_samples=None):
    """Yields `(lr (h, w, C), hr (H, W, C))` float32 pairs of an image-to-image data source.

    Sources: a list of `(lr, hr)` pairs (`tfkd.data.sr_pairs`; sizes may differ), a pair of
    stacks `(lr (N, h, w, C), hr (N, H, W, C))`, or a `tf.data.Dataset` / generator of such
    pairs (batched or not). A 3-D array is one image (h, w, C), a 4-D one a stack.
    """
    if data is None:
        raise RepresentativeDataError("No data given.")
    count = 0
    for element in _elements(data):
        lr, hr = _split(element)
        if hr is None:
            raise RepresentativeDataError(
                "Super-resolution data must be (lr, hr) pairs: a list of (lr, hr) images "
                "(tfkd.data.sr_pairs), stacks (lr (N, h, w, C), hr (N, H, W, C)), or a data "
                "set of such pairs.")
        lr, hr = _to_numpy(lr), _to_numpy(hr)
        if lr.ndim == 4 or hr.ndim == 4:
            if lr.ndim != hr.ndim or len(lr) != len(hr):
                raise RepresentativeDataError(
                    f"LR {lr.shape} and HR {hr.shape} in one element: give stacks of the "
                    "same number of images, or one image each.")
            pairs = [(lr[i], hr[i]) for i in range(len(lr))]
        else:
            pairs = [(lr, hr)]
        for lr_i, hr_i in pairs:
            yield (as_image(lr_i, f"LR image {count}"), as_image(hr_i, f"HR image {count}"))
            count += 1
            if max_samples is not None and count >= max_samples:
                return


def pair_scale(lr, hr, scale=None, index=0):
    """The scale of one (lr, hr) pair: HR must be exactly `scale` times the LR size."""
    (h, w), (H, W) = lr.shape[:2], hr.shape[:2]
    if scale is None:
        scale = H // h if h else 0
    scale = check_scale(scale)
    if (H, W) != (h * scale, w * scale):
        raise RepresentativeDataError(
            f"Pair {index}: the HR image is {H}x{W} but {scale} x the LR image ({h}x{w}) is "
            f"{h * scale}x{w * scale}. Crop the HR image to a multiple of the scale "
            "(img[:H - H % s, :W - W % s], tfkd.data.load_sr_folder(..., scale=s)) before "
            "downscaling it.")
    return scale


__all__ = ["sr_scores", "bicubic_upscale", "rgb_to_y", "tiles", "SR_METRICS"]
