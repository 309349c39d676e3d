"""Independent NumPy implementations used as golden references (float64)."""
import numpy as np


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_kl(p, q):
    """Per-row KL(p || q) of probability rows, 0 log 0 = 0."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def keras_weighted(per_sample, w):
    """Keras' sum_over_batch_size reduction with sample weights."""
    return float(np.sum(per_sample * w) / len(per_sample))


def np_resize_bilinear(x, out_hw):
    """tf.image.resize(method='bilinear', antialias=False) on (B, H, W, C): half-pixel centers."""
    x = np.asarray(x, np.float64)
    _, h, w, _ = x.shape
    oh, ow = out_hw

    def axis_weights(n_in, n_out):
        scale = n_in / n_out
        pos = (np.arange(n_out) + 0.5) * scale - 0.5
        lo_f = np.floor(pos)
        lerp = pos - lo_f
        lo = np.clip(lo_f, 0, n_in - 1).astype(int)
        hi = np.clip(np.ceil(pos), 0, n_in - 1).astype(int)
        return lo, hi, lerp

    ylo, yhi, ly = axis_weights(h, oh)
    xlo, xhi, lx = axis_weights(w, ow)
    top = x[:, ylo][:, :, xlo] * (1 - lx)[None, None, :, None] + x[:, ylo][:, :, xhi] * lx[None, None, :, None]
    bot = x[:, yhi][:, :, xlo] * (1 - lx)[None, None, :, None] + x[:, yhi][:, :, xhi] * lx[None, None, :, None]
    return top * (1 - ly)[None, :, None, None] + bot * ly[None, :, None, None]


def np_huber(x):
    ax = np.abs(x)
    return np.where(ax < 1.0, 0.5 * x * x, ax - 0.5)
