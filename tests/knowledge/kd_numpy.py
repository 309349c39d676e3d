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


# ----- detection (tests/knowledge/test_detection.py) -----------------------------------------


def np_log_sigmoid(z):
    return -np.logaddexp(0.0, -np.asarray(z, np.float64))


def np_binary_kl(z_t, z_s):
    """Per-element KL(Bern(sigmoid(z_t)) || Bern(sigmoid(z_s))), float64."""
    z_t, z_s = np.asarray(z_t, np.float64), np.asarray(z_s, np.float64)
    p = 1.0 / (1.0 + np.exp(-z_t))
    return (p * (np_log_sigmoid(z_t) - np_log_sigmoid(z_s))
            + (1 - p) * (np_log_sigmoid(-z_t) - np_log_sigmoid(-z_s)))


def np_detection_soft_targets(z_t, z_s, temp, background_weight, foreground):
    """Per-image T^2 sum_a w_a sum_c KL / max(#foreground, 1); foreground (B, N) bool."""
    kl = np_binary_kl(np.asarray(z_t, np.float64) / temp, np.asarray(z_s, np.float64) / temp)
    w = np.where(foreground, 1.0, background_weight)
    count = np.maximum(foreground.sum(-1), 1)
    return temp ** 2 * (w * kl.sum(-1)).sum(-1) / count


def np_bounded_regression(r_t, r_s, y, positive, margin):
    r_t, r_s, y = (np.asarray(v, np.float64) for v in (r_t, r_s, y))
    d_s = ((r_s - y) ** 2).sum(-1)
    d_t = ((r_t - y) ** 2).sum(-1)
    on = positive & (d_s + margin > d_t)
    return np.where(on, d_s, 0.0).sum(-1) / np.maximum(positive.sum(-1), 1)


def np_cell_mask(boxes, h, w):
    """(h, w) bool: cells whose centre ((j + .5) / h, (k + .5) / w) is in a [y0, x0, y1, x1] box."""
    mask = np.zeros((h, w), bool)
    for j in range(h):
        for k in range(w):
            cy, cx = (j + 0.5) / h, (k + 0.5) / w
            mask[j, k] = any(b[0] <= cy <= b[2] and b[1] <= cx <= b[3] for b in boxes)
    return mask


def np_conv1x1(x, kernel, bias):
    """A 1x1 convolution of a channels-last map: x @ kernel[0, 0] + bias."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    return x @ kernel[0, 0] + np.asarray(bias, np.float64)


def np_foreground_imitation(t_maps, s_maps, masks, background_weight):
    """t_maps / s_maps: per level (B, h, w, C) (s adapted); masks: per level (B, h, w) bool."""
    total = 0.0
    for t, s, m in zip(t_maps, s_maps, masks):
        err = ((np.asarray(s, np.float64) - np.asarray(t, np.float64)) ** 2).sum(-1)
        fg = (err * m).sum((1, 2)) / (2 * np.maximum(m.sum((1, 2)), 1))
        bg = (err * ~m).sum((1, 2)) / (2 * np.maximum((~m).sum((1, 2)), 1))
        total = total + fg + background_weight * bg
    return total / len(t_maps)


def np_attention_guided(t_maps, s_maps, f_maps, temp, alpha, beta):
    """Per image; t (teacher), s (student, resized), f (adapted student) per level."""
    def spatial(x):
        a = np.abs(x).mean(-1).reshape(len(x), -1)
        return a.shape[1] * np_softmax(a / temp)

    def channel(x):
        a = np.abs(x).mean((1, 2))
        return a.shape[1] * np_softmax(a / temp)

    total = 0.0
    for t, s, f in zip(t_maps, s_maps, f_maps):
        t, s, f = (np.asarray(v, np.float64) for v in (t, s, f))
        st, ct = spatial(t), channel(t)
        l_at = np.abs(st - spatial(s)).mean(-1) + np.abs(ct - channel(f)).mean(-1)
        b, h, w, c = t.shape
        weight = st.reshape(b, h, w, 1) * ct.reshape(b, 1, 1, c)
        l_am = (((f - t) ** 2) * weight).sum((1, 2, 3)) / (h * w * c)
        total = total + alpha * l_at + beta * l_am
    return total / len(t_maps)


def np_old_class(z_t, z_s, r_t, r_s, top_k, box_weight, score_threshold):
    z_t, z_s, r_t, r_s = (np.asarray(v, np.float64) for v in (z_t, z_s, r_t, r_s))
    k = z_t.shape[-1]
    per_anchor = ((z_s[..., :k] - z_t) ** 2).mean(-1)
    best = z_t.max(-1)
    if top_k is None:
        cls = per_anchor.mean(-1)
    else:
        order = np.argsort(-best, axis=-1, kind="stable")[:, :top_k]
        cls = np.take_along_axis(per_anchor, order, -1).mean(-1)
    confident = 1.0 / (1.0 + np.exp(-best)) > score_threshold
    box = (((r_s - r_t) ** 2).mean(-1) * confident).sum(-1) / np.maximum(confident.sum(-1), 1)
    return cls + box_weight * box
