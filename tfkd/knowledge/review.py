"""Knowledge review: each teacher stage is taught from the student's stage and all deeper ones.

ReviewKD is a feature term with trainable fusion modules of its own (one per stage, a few
convolutions and batch normalisations each), large enough for a module of its own.
"""
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_count
from tfkd.knowledge.feature import _check_layer_name
from tfkd.knowledge.feature import _feature


def _as_map(x):
    """A pooled vector (B, C) as a 1 x 1 map, as the authors feed the pooled feature."""
    x = as_float32(x)
    return x[:, None, None, :] if len(x.shape) == 2 else x


def _layer_list(value, arg):
    if isinstance(value, str):
        value = [value]
    try:
        value = list(value)
    except TypeError:
        value = []
    if not value:
        raise ValueError(f"ReviewKD: `{arg}` must be a non-empty list of layer names, shallow "
                         f"to deep (e.g. ['stage1', 'stage2', 'stage3']), got {value!r}.")
    return [_check_layer_name("ReviewKD", arg, v) for v in value]


def _adaptive_pool_matrix(size, out):
    """(out, size) averaging matrix of PyTorch's adaptive average pooling along one axis.

    Bin i covers [floor(i size / out), ceil((i + 1) size / out)). Written as a matrix (and
    not `tf.image.resize(method="area")`, which differs on uneven bins) because XLA has no
    area resize and this is two small matmuls.
    """
    m = np.zeros((out, size), "float32")
    for i in range(out):
        lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _unmasked(x):
    """A new tensor without the Keras mask that a masked BatchNormalization attaches.

    The mask only excludes weight-0 samples from the batch statistics; left on, it would
    make the next convolution warn that it drops a mask, at every step.
    """
    return tf.identity(x)


def _conv_bn(filters, kernel, name):
    # The authors' kaiming_uniform_(a=1) is a uniform fan-in scaling of 1: LeCun uniform.
    conv = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, dtype="float32",
                               kernel_initializer="lecun_uniform", name=f"{name}_conv")
    return conv, keras.layers.BatchNormalization(dtype="float32", name=f"{name}_bn")


class ReviewKD(Knowledge):
    """ReviewKD: attention-based fusion of the student's stages, hierarchical context loss.

    Paper: P. Chen, S. Liu, H. Zhao, J. Jia, "Distilling Knowledge via Knowledge Review",
    CVPR 2021 (code: github.com/dvlab-research/ReviewKD; mdistiller's `reviewkd.py`).

    Student features `F_1 .. F_n` (shallow to deep) are fused from the deepest up by
    attention-based fusion (ABF) modules, adapters of this term (trained with the student,
    checkpointed, never exported). With `c_mid` the fusion width, `conv_k` a k x k
    convolution without bias followed by batch normalisation, and `up` a nearest resize to
    the current stage's size:

        R_n = conv_1(F_n)                                   (the deepest stage: no fusion)
        R_i = a_0 * conv_1(F_i) + a_1 * up(R_{i+1}),  (a_0, a_1) = sigmoid(conv_1x1_2([conv_1(F_i), up(R_{i+1})]))
        O_i = conv_3(R_i)                                   (to the teacher's width C_t,i)

    so the student's stage `i` output `O_i` reviews every deeper stage. Each `O_i` is
    compared with the teacher's stage `i` by the hierarchical context loss (HCL): with
    `P_l` the adaptive average pooling to `l x l` (PyTorch's bins, as the authors') over `pool_levels` (4, 2, 1), skipping the levels `l >= H` of a `H x W` stage,

        HCL_i = ( mse(O_i, T_i) + sum_{k} 2^-k mse(P_{l_k}(O_i), P_{l_k}(T_i)) ) / (1 + sum_k 2^-k)
        L     = sum_i HCL_i

    (`k` = 1, 2, ... counts the levels used; `mse` is the mean over a sample's positions
    and channels), and `L` is the sample-weighted mean of the samples' losses.

    The term is batch-level (it returns a scalar): the fusion's batch normalisations
    normalise with the batch's statistics in training, which couples the samples, as in the
    paper. Samples of weight 0 are masked out of those statistics and of the mean, so they
    leave no trace. A pooled vector `(batch, C)` is a 1 x 1 stage (the authors
    add the pooled feature as the deepest one). When an `O_i` and its `T_i` differ in size
    (the authors' networks never do), `O_i` is resized bilinearly to the teacher's.

    The paper warms the weight up linearly over 20 of 240 epochs on CIFAR: pass
    `weight=tfkd.knowledge.warmup(1.0, steps)` (spec `weight=warmup(1.0,2000)`).
    The fusion's batch normalisations run in training mode on training batches and use
    their moving statistics on evaluation batches (`loss(..., training=False)`).

    Args:
        student_layers: the student's stage layers, shallow to deep.
        teacher_layers: the teacher's stage layers, as many, in the same order.
        mid_channels: fusion width `c_mid`; None: the authors' min(512, channels of the
            student's deepest stage).
        pool_levels: output sizes of HCL's pooled levels (authors: 4, 2, 1).
        weight: multiplier (>= 0) or a schedule of it (authors' CIFAR: 1, warmed up).
        name: metric prefix.

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.ReviewKD(["s1", "s2"], ["t1", "t2"])
    >>> sym = lambda *shape: keras.KerasTensor((None,) + shape)
    >>> term.build_term(View(None, {"t1": sym(8, 8, 16), "t2": sym(4, 4, 32)}),
    ...                 View(None, {"s1": sym(8, 8, 8), "s2": sym(4, 4, 16)}))
    >>> rng = np.random.default_rng(0)
    >>> t = View(None, {"t1": rng.normal(size=(2, 8, 8, 16)), "t2": rng.normal(size=(2, 4, 4, 32))})
    >>> s = View(None, {"s1": rng.normal(size=(2, 8, 8, 8)), "s2": rng.normal(size=(2, 4, 4, 16))})
    >>> term.compute(t, s).shape, term.mid_width
    (TensorShape([]), 16)
    """

    default_name = "review_kd"
    aliases = ("knowledge_review",)
    example_args = {"student_layers": ["student_map", "student_vec"],
                    "teacher_layers": ["teacher_map", "teacher_vec"], "mid_channels": 4}

    def __init__(self, student_layers, teacher_layers, mid_channels=None, pool_levels=(4, 2, 1),
                 weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.student_layers = _layer_list(student_layers, "student_layers")
        self.teacher_layers = _layer_list(teacher_layers, "teacher_layers")
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f"ReviewKD: {len(self.student_layers)} student layers and "
                f"{len(self.teacher_layers)} teacher layers; pair each student stage with the "
                "teacher stage it learns, in the same shallow-to-deep order.")
        self.mid_channels = (None if mid_channels is None
                             else check_count("mid_channels", mid_channels, "ReviewKD"))
        try:
            levels = [check_count("pool_levels", v, "ReviewKD") for v in pool_levels]
        except TypeError:
            raise TypeError(f"ReviewKD: `pool_levels` must be a list of integers >= 1 (the "
                            f"authors': [4, 2, 1]), got {pool_levels!r}.") from None
        self.pool_levels = levels
        self.fusions = None

    def build_term(self, teacher, student):
        shapes = []
        for s_name, t_name in zip(self.student_layers, self.teacher_layers):
            s = _feature(student, s_name, "student", "ReviewKD")
            t = _feature(teacher, t_name, "teacher", "ReviewKD")
            for x, side, layer in ((s, "student", s_name), (t, "teacher", t_name)):
                if len(x.shape) not in (2, 4) or None in x.shape[1:]:
                    raise ValueError(
                        f"ReviewKD: the {side} feature {layer!r} has shape {tuple(x.shape)}; "
                        "a stage must be a map (batch, height, width, channels) or a pooled "
                        "vector (batch, channels), of known size (HCL's pooling is built for "
                        "the stage's size).")
            shapes.append((tuple(_as_map_shape(s.shape)), tuple(_as_map_shape(t.shape))))
        if self.fusions is None:
            self.mid_width = self.mid_channels or min(512, shapes[-1][0][-1])
            self.fusions = []
            for i, (s_shape, t_shape) in enumerate(shapes):
                name = f"{self.name}_abf{i + 1}"
                squeeze = _conv_bn(self.mid_width, 1, f"{name}_in")
                expand = _conv_bn(t_shape[-1], 3, f"{name}_out")
                deepest = i == len(shapes) - 1
                attention = None if deepest else keras.layers.Conv2D(
                    2, 1, activation="sigmoid", dtype="float32", name=f"{name}_attention")
                mid = s_shape[:-1] + (self.mid_width,)
                squeeze[0].build(s_shape)
                squeeze[1].build(mid)
                expand[0].build(mid)
                expand[1].build(mid[:-1] + (t_shape[-1],))
                if attention is not None:
                    attention.build(mid[:-1] + (2 * self.mid_width,))
                self.fusions.append((squeeze, attention, expand))
        super().build_term(teacher, student)

    def _fuse(self, maps, training, keep):
        """O_i of every stage, computed from the deepest up (the authors' ABF chain).

        `keep` (batch,) bool or None: the samples that count in the batch statistics.
        """
        outs, residual = [None] * len(maps), None
        for i in reversed(range(len(maps))):
            (conv_in, bn_in), attention, (conv_out, bn_out) = self.fusions[i]
            mask = None if keep is None else ops.broadcast_to(
                keep[:, None, None], ops.shape(maps[i])[:-1])
            x = _unmasked(bn_in(conv_in(maps[i]), training=training, mask=mask))
            if attention is not None:
                y = tf.image.resize(residual, tf.shape(x)[1:3], method="nearest")
                a = attention(ops.concatenate([x, y], axis=-1))
                x = x * a[..., 0:1] + y * a[..., 1:2]
            outs[i] = _unmasked(bn_out(conv_out(x), training=training, mask=mask))
            residual = x
        return outs

    def _hcl(self, o, t):
        """Hierarchical context loss of one stage, per sample."""
        mse = lambda a, b: ops.mean(ops.reshape(ops.square(a - b), (ops.shape(a)[0], -1)), -1)
        loss, share, total = mse(o, t), 1.0, 1.0
        height, width = t.shape[1:3]
        for level in self.pool_levels:
            if level >= height:
                continue
            share /= 2.0
            rows = _adaptive_pool_matrix(height, level)
            cols = _adaptive_pool_matrix(width, level)
            pool = lambda x: ops.einsum("ih,bhwc,jw->bijc", rows, x, cols)
            loss = loss + share * mse(pool(o), pool(t))
            total += share
        return loss / total

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        if self.fusions is None:
            raise ValueError("ReviewKD: call `build_term` first (the Distiller does): it "
                             "creates the fusion modules for the tapped stages' shapes.")
        training = getattr(self, "training_step", True)
        maps = [_as_map(_feature(student, n, "student", "ReviewKD")) for n in self.student_layers]
        targets = [_as_map(_feature(teacher, n, "teacher", "ReviewKD"))
                   for n in self.teacher_layers]
        batch = ops.shape(maps[0])[0]
        if sample_weight is None:
            w, keep = ops.ones((batch,), "float32"), None
        else:
            w = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            keep = w > 0
        per_sample = 0.0
        for o, t in zip(self._fuse(maps, training, keep), targets):
            if tuple(o.shape[1:3]) != tuple(t.shape[1:3]):
                o = tf.image.resize(o, t.shape[1:3], method="bilinear")
            per_sample = per_sample + self._hcl(o, t)
        return ops.divide_no_nan(ops.sum(w * per_sample), ops.sum(w))

    def get_config(self):
        config = super().get_config()
        config.update(student_layers=list(self.student_layers),
                      teacher_layers=list(self.teacher_layers),
                      mid_channels=None if self.mid_channels is None else float(self.mid_channels),
                      pool_levels=[float(v) for v in self.pool_levels])
        return config


def _as_map_shape(shape):
    shape = tuple(shape)
    return (shape[0], 1, 1, shape[1]) if len(shape) == 2 else shape
