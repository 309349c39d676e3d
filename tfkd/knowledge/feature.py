"""Feature-based knowledge: what the teacher's intermediate representations say.

Features are tapped by layer name (the Distiller runs each model once and hands the terms a
`View` whose `.features` maps each requested name to its tensor). Image features are
channels-last `(batch, height, width, channels)`. All terms return a per-sample loss
`(batch,)` except OFD, a batch-level term (its docstring says why); math is float32.
"""
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_non_negative
from tfkd.knowledge.base import check_positive

_EPS = 1e-12


def _check_layer_name(owner, arg, value):
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"{owner}: `{arg}` must be a layer name (a non-empty string, or a "
            f"'nested_model/layer' path), got {value!r}."
        )
    return value


def _feature(view, name, side, owner):
    """Looks up a tapped feature in a View, with an error that says what was tapped."""
    if view is None:
        raise ValueError(
            f"{owner} needs a teacher ({side} feature {name!r}): pass `teacher=` to the "
            "Distiller."
        )
    try:
        return view.features[name]
    except KeyError:
        raise ValueError(
            f"{owner}: the {side} feature {name!r} was not tapped (available: "
            f"{sorted(view.features)}). Check the layer name; the Distiller taps the names "
            f"listed in the term's `{side}_features`."
        ) from None


def _spatial_resize(x, size):
    """Bilinear resize of a channels-last (B, H, W, C) or (B, L, C) tensor to `size`."""
    if len(x.shape) == 4:
        return tf.image.resize(x, size, method="bilinear")
    # (B, L, C): resize as a (B, L, 1, C) image along L only.
    return tf.image.resize(x[:, :, None, :], (size[0], 1), method="bilinear")[:, :, 0, :]


def _static_spatial(x):
    return tuple(x.shape[1:-1])


def _same_spatial(a, b):
    sa, sb = _static_spatial(a), _static_spatial(b)
    return len(sa) == len(sb) and all(x is not None and x == y for x, y in zip(sa, sb))


def _resize_like(x, ref):
    """Resizes `x` to the spatial size of `ref` when it differs (static or dynamic shapes)."""
    if len(x.shape) <= 2 or _same_spatial(x, ref):
        return x
    size = ops.shape(ref)[1:-1]
    if len(ref.shape) == 3:
        size = (size[0],)
    return _spatial_resize(x, tuple(size))


class Hint(Knowledge):
    """FitNets hint: a student feature, through a learned adapter, regresses a teacher feature.

    Paper: A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio, "FitNets:
    Hints for Thin Deep Nets", ICLR 2015.

    With student feature `F_s` (the "guided" layer), teacher feature `F_t` (the "hint"),
    adapter `r` (FitNets' regressor) and a bilinear resize `R` to the teacher's spatial size:

        L_i = mean_j ( F_t[i, j] - R(r(F_s))[i, j] )^2          (j: all positions, channels)

    The adapter is a 1x1 convolution (`Conv2D(C_t, 1)`) for 4-D features and a `Dense(C_t)`
    on the last axis for 2-D / 3-D features, created in `build_term`, float32, trained with
    the student by the Distiller and never exported with it.

    `adapter`:
      - `"auto"` (default): add the adapter only when the channel counts differ; with equal
        channels the student feature is compared directly (no extra capacity to hide a gap).
      - `"conv"`: always add it, as FitNets does.
      - `None`: never; channels must then match.

    The resize happens after the adapter, so it runs on `C_t` channels. Feature ranks must
    match (4-D with 4-D, ...): a 4-D map cannot hint a pooled 2-D vector.

    Args:
        student_layer: name of the student layer whose output is guided.
        teacher_layer: name of the teacher layer whose output is the hint.
        adapter: "auto", "conv" or None (see above).
        weight: multiplier of this term (>= 0).
        name: metric prefix (`hint_loss`).

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.Hint("s_block", "t_block")
    >>> term.build_term(View(keras.KerasTensor((None, 10)), {"t_block": keras.KerasTensor((None, 8, 8, 32))}),
    ...                 View(keras.KerasTensor((None, 10)), {"s_block": keras.KerasTensor((None, 4, 4, 16))}))
    >>> t = View(None, {"t_block": np.ones((2, 8, 8, 32), "float32")})
    >>> s = View(None, {"s_block": np.ones((2, 4, 4, 16), "float32")})
    >>> term.loss(t, s).shape
    TensorShape([])
    """

    default_name = "hint"
    example_args = {"student_layer": "student_map", "teacher_layer": "teacher_map",
                    "adapter": "conv"}
    _ADAPTERS = ("auto", "conv", None)

    def __init__(self, student_layer, teacher_layer, adapter="auto", weight=1.0, name=None,
                 **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.student_layer = _check_layer_name("Hint", "student_layer", student_layer)
        self.teacher_layer = _check_layer_name("Hint", "teacher_layer", teacher_layer)
        if adapter not in self._ADAPTERS:
            raise ValueError(
                f"Hint: `adapter` must be one of {self._ADAPTERS}, got {adapter!r}: 'auto' adds "
                "a 1x1 conv only when channels differ, 'conv' always adds it, None never does."
            )
        self.adapter_mode = adapter
        self.adapter = None

    def build_term(self, teacher, student):
        t = _feature(teacher, self.teacher_layer, "teacher", "Hint")
        s = _feature(student, self.student_layer, "student", "Hint")
        where = f"Hint({self.student_layer!r} -> {self.teacher_layer!r})"
        if len(t.shape) != len(s.shape):
            raise ValueError(
                f"{where}: incompatible feature ranks: the student feature has shape "
                f"{tuple(s.shape)} ({len(s.shape)}-D) and the teacher's {tuple(t.shape)} "
                f"({len(t.shape)}-D). Pair layers of the same kind (a conv map with a conv "
                "map, a vector with a vector), or pool the map in the model before tapping it."
            )
        if len(t.shape) not in (2, 3, 4):
            raise ValueError(
                f"{where}: features must be 2-D (batch, channels), 3-D (batch, length, "
                f"channels) or 4-D (batch, height, width, channels); got {tuple(t.shape)}."
            )
        c_t, c_s = t.shape[-1], s.shape[-1]
        if c_t is None or c_s is None:
            raise ValueError(
                f"{where}: the channel (last) dimension must be known; got student "
                f"{tuple(s.shape)} and teacher {tuple(t.shape)}."
            )
        needs = self.adapter_mode == "conv" or (self.adapter_mode == "auto" and c_t != c_s)
        if not needs and c_t != c_s:
            raise ValueError(
                f"{where}: the student feature has {c_s} channels and the teacher's {c_t}, and "
                "`adapter=None` adds no projection. Use adapter='auto' (a learned 1x1 conv) or "
                "tap layers with equal channels."
            )
        if needs and self.adapter is None:
            if len(s.shape) == 4:
                self.adapter = keras.layers.Conv2D(
                    c_t, 1, dtype="float32", name=f"{self.name}_adapter"
                )
            else:
                self.adapter = keras.layers.Dense(c_t, dtype="float32", name=f"{self.name}_adapter")
            self.adapter.build(tuple(s.shape))
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t = as_float32(_feature(teacher, self.teacher_layer, "teacher", "Hint"))
        s = as_float32(_feature(student, self.student_layer, "student", "Hint"))
        if self.adapter is not None:
            s = self.adapter(s)
        s = _resize_like(s, t)
        err = ops.reshape(ops.square(t - s), (ops.shape(t)[0], -1))
        return ops.mean(err, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            student_layer=self.student_layer,
            teacher_layer=self.teacher_layer,
            adapter=self.adapter_mode,
        )
        return config


def _check_pairs(owner, pairs):
    """`pairs` as a list of (student_layer, teacher_layer) tuples; one pair may be a tuple."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
        pairs = [pairs]
    try:
        pairs = [tuple(pair) for pair in pairs]
    except TypeError:
        pairs = None
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ValueError(
            f"{owner}: `pairs` must be a non-empty list of (student_layer, teacher_layer) "
            "name pairs, e.g. [('s_stage2', 't_stage2')]."
        )
    for s_name, t_name in pairs:
        _check_layer_name(owner, "pairs (student)", s_name)
        _check_layer_name(owner, "pairs (teacher)", t_name)
    return pairs


class _PairsTerm(Knowledge):
    """Shared plumbing of the terms that take `pairs` of (student_layer, teacher_layer)."""

    @property
    def teacher_features(self):
        return tuple(dict.fromkeys(t for _, t in self.pairs))

    @property
    def student_features(self):
        return tuple(dict.fromkeys(s for s, _ in self.pairs))

    def _check_spatial_maps(self, teacher, student, what):
        """Each pair must be spatial maps of one rank: 4-D images or 3-D sequences."""
        for s_name, t_name in self.pairs:
            t, s = self._pair_features(teacher, student, s_name, t_name)
            if len(t.shape) != len(s.shape) or len(t.shape) not in (3, 4):
                raise ValueError(
                    f"{type(self).__name__}({s_name!r} -> {t_name!r}): {what} needs spatial "
                    f"feature maps of the same rank, 4-D (batch, height, width, channels) or "
                    f"3-D (batch, length, channels); got student {tuple(s.shape)} and teacher "
                    f"{tuple(t.shape)}. Tap convolutional layers, before global pooling."
                )

    def _pair_features(self, teacher, student, s_name, t_name):
        owner = type(self).__name__
        return (_feature(teacher, t_name, "teacher", owner),
                _feature(student, s_name, "student", owner))


class AttentionTransfer(_PairsTerm):
    """Attention transfer: the student matches the teacher's spatial attention maps.

    Paper: S. Zagoruyko, N. Komodakis, "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

    For a feature map `A` of shape (H, W, C) the attention map and its normalised form are

        a = mean_c |A[..., c]|^p                      (H, W), flattened to H*W values
        q = a / ||a||_2

    and per sample, over the layer pairs:

        L_i = (beta / 2) * sum_pairs mean_j ( q_s[i, j] - q_t[i, j] )^2

    Channels may differ. When the spatial sizes differ, the student's (un-normalised) map
    `a_s` is bilinearly resized to the teacher's size before normalising. 3-D features
    (batch, length, channels) are handled the same way along their length.

    Args:
        pairs: list of `(student_layer, teacher_layer)` name pairs.
        p: exponent `p > 0` of the attention map (paper: 2).
        beta: the paper's `beta` (>= 0); 1000 in the paper.
        weight: multiplier of this term (>= 0).
        name: metric prefix.

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.AttentionTransfer([("s1", "t1")])
    >>> rng = np.random.default_rng(0)
    >>> t = View(None, {"t1": rng.normal(size=(2, 8, 8, 32)).astype("float32")})
    >>> s = View(None, {"s1": rng.normal(size=(2, 4, 4, 16)).astype("float32")})
    >>> float(term.loss(t, s)) > 0
    True
    """

    default_name = "attention"
    example_args = {"pairs": [("student_map", "teacher_map")], "p": 3, "beta": 500.0}

    def __init__(self, pairs, p=2, beta=1000.0, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.pairs = _check_pairs("AttentionTransfer", pairs)
        self.p = check_positive("p", p, "AttentionTransfer")
        self.beta = check_non_negative("beta", beta, "AttentionTransfer")

    def build_term(self, teacher, student):
        self._check_spatial_maps(teacher, student, "attention")
        super().build_term(teacher, student)

    def _attention(self, x):
        """Un-normalised attention map: mean over channels of |x|^p, keeping a channel axis."""
        x = as_float32(x)
        return ops.mean(ops.power(ops.abs(x), self.p), axis=-1, keepdims=True)

    @staticmethod
    def _normalise(a):
        a = ops.reshape(a, (ops.shape(a)[0], -1))
        return a * ops.rsqrt(ops.maximum(ops.sum(ops.square(a), axis=-1, keepdims=True), _EPS))

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        total = 0.0
        for s_name, t_name in self.pairs:
            a_t = self._attention(_feature(teacher, t_name, "teacher", "AttentionTransfer"))
            a_s = self._attention(_feature(student, s_name, "student", "AttentionTransfer"))
            a_s = _resize_like(a_s, a_t)
            q_t, q_s = self._normalise(a_t), self._normalise(a_s)
            total = total + ops.mean(ops.square(q_s - q_t), axis=-1)
        return (self.beta / 2.0) * total

    def get_config(self):
        config = super().get_config()
        config.update(pairs=[list(pair) for pair in self.pairs], p=self.p, beta=self.beta)
        return config


class FeatureNormalizedKD(Knowledge):
    """Feature-normalised KD: a per-sample temperature from the penultimate feature's L2 norm.

    Paper: K. Xu, L. Rui, Y. Li, L. Gu, "Feature Normalized Knowledge Distillation for Image
    Classification", ECCV 2020 (code: github.com/aztc/FNKD).

    The paper replaces Hinton's fixed `T` by `||f|| / tau`, where `f` is the sample's
    penultimate feature (the input of the classifier), on each side with its own feature:

        q_fn   = softmax(tau * z_t / ||f_t||)               (teacher, eq. of q_fn)
        L_fn   = CE(y, softmax(z_s)) + lambda^2 * H(q_fn, softmax(tau * z_s / ||f_s||))

    This term implements the second part, per sample, as a KL divergence (the paper's cross
    entropy `H` minus the teacher's entropy, which does not depend on the student: same
    gradients, and 0 when the student matches), with the authors' released code's clip of
    the norm at `tau` (the per-sample temperature never drops below 1, so nothing is
    sharpened and a zero feature cannot divide by zero):

        T_t,i = max(||f_t,i||_2, tau) / tau          T_s,i = max(||f_s,i||_2, tau) / tau
        L_i   = KL( softmax(z_t,i / T_t,i) || softmax(z_s,i / T_s,i) )

    `||f||` is over all of a sample's feature values (a map is flattened). The whole logit,
    bias included, is divided by `T` (the Distiller sees logits, not `W f` and `b`
    separately). `weight` is the paper's `lambda^2`: the authors keep
    `lambda^2 tau^2 / mean||f||^2 ~ 1`, i.e. `weight ~ (mean||f|| / tau)^2` (their CIFAR
    setting: tau = 2, weight = 9). The task loss `CE(y, softmax(z_s))` is the Distiller's.

    Args:
        student_feature: name of the student's penultimate layer (the classifier's input).
        teacher_feature: name of the teacher's penultimate layer.
        tau: `tau > 0` (official code: 2.0).
        weight: `lambda^2` (>= 0).
        output: which output holds the logits for multi-output models.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.FeatureNormalizedKD("s_pool", "t_pool", tau=2.0)
    >>> t = View(np.array([[2.0, 0.5, -1.0]], "float32"), {"t_pool": np.full((1, 4), 2.0, "float32")})
    >>> s = View(np.array([[1.0, 1.0, 0.0]], "float32"), {"s_pool": np.full((1, 4), 1.5, "float32")})
    >>> round(float(term.loss(t, s)), 4)
    0.075
    """

    default_name = "fnkd"
    example_args = {"student_feature": "student_vec", "teacher_feature": "teacher_vec",
                    "tau": 1.5}

    def __init__(self, student_feature, teacher_feature, tau=2.0, weight=1.0, output=None,
                 name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.student_feature = _check_layer_name("FeatureNormalizedKD", "student_feature",
                                                 student_feature)
        self.teacher_feature = _check_layer_name("FeatureNormalizedKD", "teacher_feature",
                                                 teacher_feature)
        self.tau = check_positive("tau", tau, "FeatureNormalizedKD")
        if output is not None and not isinstance(output, (int, str)):
            raise TypeError(
                f"FeatureNormalizedKD: `output` must be an index, a name or None, got {output!r}."
            )
        self.output_selector = output

    @property
    def teacher_features(self):
        return (self.teacher_feature,)

    @property
    def student_features(self):
        return (self.student_feature,)

    def build_term(self, teacher, student):
        from tfkd.knowledge.response import _check_logits

        _check_logits("FeatureNormalizedKD", teacher, student, self.output_selector)
        for view, name, side in ((teacher, self.teacher_feature, "teacher"),
                                 (student, self.student_feature, "student")):
            f = _feature(view, name, side, "FeatureNormalizedKD")
            if len(f.shape) < 2:
                raise ValueError(
                    f"FeatureNormalizedKD: the {side} feature {name!r} has shape "
                    f"{tuple(f.shape)}; it must have a batch axis and feature values "
                    "(the penultimate layer, e.g. the global pooling output)."
                )
        super().build_term(teacher, student)

    def _scaled_log_probs(self, view, name, side):
        z = as_float32(view.output(self.output_selector))
        f = as_float32(_feature(view, name, side, "FeatureNormalizedKD"))
        f = ops.reshape(f, (ops.shape(f)[0], -1))
        norm = ops.sqrt(ops.maximum(ops.sum(ops.square(f), axis=-1, keepdims=True), _EPS))
        temperature = ops.maximum(norm, self.tau) / self.tau
        return ops.log_softmax(z / temperature, axis=-1)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        log_q_t = self._scaled_log_probs(teacher, self.teacher_feature, "teacher")
        log_q_s = self._scaled_log_probs(student, self.student_feature, "student")
        return ops.sum(ops.exp(log_q_t) * (log_q_t - log_q_s), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            student_feature=self.student_feature,
            teacher_feature=self.teacher_feature,
            tau=self.tau,
            output=self.output_selector,
        )
        return config


class VID(_PairsTerm):
    """Variational information distillation: the student's features predict the teacher's.

    Paper: S. Ahn, S. X. Hu, A. Damianou, N. D. Lawrence, Z. Dai, "Variational Information
    Distillation for Knowledge Transfer", CVPR 2019 (as in the authors' code, RepDistiller's
    and torchdistill's `VIDLoss`).

    VID maximises a variational lower bound of the mutual information between teacher and
    student features: the teacher feature `t` is modelled as a Gaussian whose mean `mu` a
    regressor computes from the student feature and whose per-channel variance is learned:

        mu       = R(r(s))        r: 1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv
        sigma2_c = softplus(alpha_c) + eps
        L_i      = sum_pairs mean_{j, c} 0.5 * ( log sigma2_c + (t[i, j, c] - mu[i, j, c])^2
                                                              / sigma2_c )

    (the negative log-likelihood of `t` up to the constant `0.5 log 2 pi`; `j`: positions,
    `c`: teacher channels). Per pair, the regressor `r` has hidden width `C_t` and no biases
    (RepDistiller's `VIDLoss(C_s, C_t, C_t)`), 1x1 convolutions for 4-D features and `Dense`
    layers on the last axis for 2-D / 3-D ones; `R` resizes bilinearly to the teacher's
    spatial size when it differs (after the regressor, as `Hint` does; RepDistiller
    average-pools the larger map instead). `alpha_c` is initialised to
    `log(exp(init_pred_var - eps) - 1)`, so that every `sigma2_c` starts at `init_pred_var`.
    The regressors and the `alpha`s (float32) are the term's trainable weights, created in
    `build_term`, trained with the student and never exported with it.

    With a perfect prediction (`mu = t`) the loss is `0.5 * mean_c log sigma2_c`, lowered
    further by shrinking the variances: the loss can be negative.

    Args:
        pairs: list of `(student_layer, teacher_layer)` name pairs (features of the same
            rank: 4-D maps, 3-D sequences or 2-D vectors).
        init_pred_var: initial variance `sigma2` (> eps; paper's code: 5.0).
        eps: lower bound `eps > 0` of the variance (paper's code: 1e-5).
        weight: multiplier of this term (>= 0).
        name: metric prefix (`vid_loss`).

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.VID([("s_block", "t_block")])
    >>> term.build_term(View(None, {"t_block": keras.KerasTensor((None, 8, 8, 32))}),
    ...                 View(None, {"s_block": keras.KerasTensor((None, 4, 4, 16))}))
    >>> rng = np.random.default_rng(0)
    >>> t = View(None, {"t_block": rng.normal(size=(2, 8, 8, 32)).astype("float32")})
    >>> s = View(None, {"s_block": rng.normal(size=(2, 4, 4, 16)).astype("float32")})
    >>> term.compute(t, s).shape
    TensorShape([2])
    >>> [round(float(v), 4) for v in term.variances()[0][:3]]  # sigma2 starts at init_pred_var
    [5.0, 5.0, 5.0]
    """

    default_name = "vid"
    aliases = ("variational_information_distillation",)
    example_args = {"pairs": [("student_map", "teacher_map")], "init_pred_var": 2.0}

    def __init__(self, pairs, init_pred_var=5.0, eps=1e-5, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.pairs = _check_pairs("VID", pairs)
        self.init_pred_var = check_positive("init_pred_var", init_pred_var, "VID")
        self.eps = check_positive("eps", eps, "VID")
        if self.init_pred_var <= self.eps:
            raise ValueError(
                f"VID: `init_pred_var` must be larger than `eps` (the variance is "
                f"softplus(alpha) + eps > eps), got init_pred_var={self.init_pred_var} and "
                f"eps={self.eps}."
            )
        self.regressors = []
        self.alphas = []

    def build_term(self, teacher, student):
        shapes = []
        for s_name, t_name in self.pairs:
            t, s = self._pair_features(teacher, student, s_name, t_name)
            where = f"VID({s_name!r} -> {t_name!r})"
            if len(t.shape) != len(s.shape) or len(t.shape) not in (2, 3, 4):
                raise ValueError(
                    f"{where}: features must have the same rank, 2-D (batch, channels), 3-D "
                    f"(batch, length, channels) or 4-D (batch, height, width, channels); got "
                    f"student {tuple(s.shape)} and teacher {tuple(t.shape)}."
                )
            if t.shape[-1] is None or s.shape[-1] is None:
                raise ValueError(
                    f"{where}: the channel (last) dimension must be known; got student "
                    f"{tuple(s.shape)} and teacher {tuple(t.shape)}."
                )
            shapes.append((tuple(s.shape), t.shape[-1]))
        if not self.regressors:
            alpha = float(np.log(np.expm1(self.init_pred_var - self.eps)))
            for k, (s_shape, c_t) in enumerate(shapes):
                if len(s_shape) == 4:
                    layer = lambda units, i: keras.layers.Conv2D(
                        units, 1, use_bias=False, dtype="float32",
                        name=f"{self.name}_regressor{k}_conv{i}")
                else:
                    layer = lambda units, i: keras.layers.Dense(
                        units, use_bias=False, dtype="float32",
                        name=f"{self.name}_regressor{k}_dense{i}")
                regressor = keras.Sequential(
                    [layer(c_t, 0), keras.layers.ReLU(dtype="float32"),
                     layer(c_t, 1), keras.layers.ReLU(dtype="float32"), layer(c_t, 2)],
                    name=f"{self.name}_regressor{k}")
                regressor.build((None,) + s_shape[1:])
                self.regressors.append(regressor)
                self.alphas.append(self.add_weight(
                    shape=(c_t,), initializer=keras.initializers.Constant(alpha),
                    dtype="float32", trainable=True, name=f"alpha{k}"))
        super().build_term(teacher, student)

    def variances(self):
        """The current per-channel variances `sigma2 = softplus(alpha) + eps`, one per pair."""
        return [ops.softplus(alpha) + self.eps for alpha in self.alphas]

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        if not self.regressors:
            raise ValueError("VID: call `build_term` (the Distiller does) before computing.")
        total = 0.0
        for (s_name, t_name), regressor, var in zip(self.pairs, self.regressors,
                                                    self.variances()):
            t, s = self._pair_features(teacher, student, s_name, t_name)
            t = ops.stop_gradient(as_float32(t))
            mu = _resize_like(regressor(as_float32(s)), t)
            nll = 0.5 * (ops.log(var) + ops.square(t - mu) / var)
            total = total + ops.mean(ops.reshape(nll, (ops.shape(t)[0], -1)), axis=-1)
        return total

    def get_config(self):
        config = super().get_config()
        config.update(pairs=[list(pair) for pair in self.pairs],
                      init_pred_var=self.init_pred_var, eps=self.eps)
        return config


class NST(_PairsTerm):
    """Neuron selectivity transfer: the student's channels match the distribution of the teacher's.

    Paper: Z. Huang, N. Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
    Transfer", arXiv:1707.01219, 2017 (polynomial kernel, as RepDistiller's and torchdistill's
    `NSTLoss`).

    Each channel's map is one sample of a distribution over "neuron selectivity patterns":
    flattened over the positions and L2-normalised, `f^c = vec(F[..., c]) / ||vec(F[..., c])||`.
    Per sample, the squared maximum mean discrepancy between the student's `C_s` and the
    teacher's `C_t` patterns, with the kernel `k(x, y) = (x . y + c)^d`:

        L_i = sum_pairs [ mean_{c, c'} k(f_t^c, f_t^c') + mean_{c, c'} k(f_s^c, f_s^c')
                          - 2 mean_{c, c'} k(f_s^c, f_t^c') ]

    The paper's best kernel, the default, is `d = 2, c = 0`. Channel counts may differ (NST
    compares distributions, not channels one to one); when the spatial sizes differ the
    student's map is resized bilinearly to the teacher's before normalising. 3-D features
    (batch, length, channels) are handled the same way along their length. The loss is 0
    when the student's channel patterns are the teacher's.

    Args:
        pairs: list of `(student_layer, teacher_layer)` name pairs of spatial feature maps.
        degree: the kernel's degree `d`, a whole number >= 1 (paper: 2).
        constant: the kernel's constant `c >= 0` (paper: 0).
        weight: multiplier of this term (>= 0); RepDistiller's CIFAR-100 runs use 50 (its
            loss is a mean over the batch of this per-sample value).
        name: metric prefix (`nst_loss`).

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.NST([("s1", "t1")])
    >>> rng = np.random.default_rng(0)
    >>> f = rng.normal(size=(2, 4, 4, 8)).astype("float32")
    >>> [round(float(v), 6) for v in term.compute(View(None, {"t1": f}), View(None, {"s1": f}))]
    [0.0, 0.0]
    >>> s = View(None, {"s1": rng.normal(size=(2, 2, 2, 3)).astype("float32")})
    >>> float(term.loss(View(None, {"t1": f}), s)) > 0
    True
    """

    default_name = "nst"
    aliases = ("neuron_selectivity_transfer",)
    example_args = {"pairs": [("student_map", "teacher_map")], "constant": 0.5}

    def __init__(self, pairs, degree=2, constant=0.0, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.pairs = _check_pairs("NST", pairs)
        self.degree = check_positive("degree", degree, "NST")
        if self.degree != int(self.degree):
            raise ValueError(
                f"NST: `degree` must be a whole number >= 1 (a polynomial kernel), got "
                f"{self.degree}."
            )
        self.constant = check_non_negative("constant", constant, "NST")

    def build_term(self, teacher, student):
        self._check_spatial_maps(teacher, student, "neuron selectivity")
        super().build_term(teacher, student)

    @staticmethod
    def _patterns(x):
        """(B, ..., C) -> (B, C, positions), each channel's map L2-normalised."""
        x = ops.reshape(x, (ops.shape(x)[0], -1, ops.shape(x)[-1]))
        x = ops.transpose(x, (0, 2, 1))
        return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), _EPS))

    def _kernel_mean(self, a, b):
        k = ops.power(ops.matmul(a, ops.transpose(b, (0, 2, 1))) + self.constant, self.degree)
        return ops.mean(ops.reshape(k, (ops.shape(k)[0], -1)), axis=-1)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        total = 0.0
        for s_name, t_name in self.pairs:
            t, s = self._pair_features(teacher, student, s_name, t_name)
            t = ops.stop_gradient(as_float32(t))
            f_t = self._patterns(t)
            f_s = self._patterns(_resize_like(as_float32(s), t))
            total = total + (self._kernel_mean(f_t, f_t) + self._kernel_mean(f_s, f_s)
                             - 2.0 * self._kernel_mean(f_s, f_t))
        return total

    def get_config(self):
        config = super().get_config()
        config.update(pairs=[list(pair) for pair in self.pairs], degree=self.degree,
                      constant=self.constant)
        return config


class OFD(Knowledge):
    """Overhaul of feature distillation: pre-ReLU teacher features, margin ReLU, partial L2.

    Paper: B. Heo, J. Kim, S. Yun, H. Park, N. Kwak, J. Y. Choi, "A Comprehensive Overhaul of
    Feature Distillation", ICCV 2019 (official code: github.com/clovaai/overhaul-distillation).

    Where to tap: the teacher feature is its response BEFORE the ReLU, at the end of a stage
    (the paper distils the position just before each stage's last ReLU): tap the
    BatchNormalization layer whose output feeds the ReLU of the stage's last block (in a
    post-activation residual block, whose ReLU follows the residual `Add`, tap that `Add`).
    The student is tapped at the same, pre-ReLU, position.

    The student feature goes through a connector `C` (1x1 conv without bias, He-normal
    fan-out init, then BatchNormalization, as the official `build_feature_connector`;
    trainable, float32, created in `build_term`), resized bilinearly to the teacher's spatial
    size `R` when it differs. The teacher's target is its margin ReLU, with a per-channel
    margin `m_c = E[t_c | t_c < 0]` (the expected value of the negative responses):

        s~ = R(C(s))            t' = max(t, m)
        d  = (s~ - t')^2, except 0 where s~ <= t' and t' <= 0   (partial L2)
        L_i = sum_{positions, channels} d[i] / normalize

    `normalize` is the official code's constant: it divides the per-sample sum by 1000 on
    CIFAR (`loss_distill.sum() / batch_size / 1000`, the paper's alpha) and 10000 on
    ImageNet, so `weight=1` with the default reproduces the CIFAR recipe for one stage (the
    official code adds stages with weights 1/2^(n-1-k): use one OFD term per stage with
    those weights).

    `margin`:
      - a list / array of `C_t` per-channel values (<= 0): the paper's margin, from the
        teacher BN's (gamma, beta) assuming Gaussian responses; `OFD.margin_from_batch_norm`
        computes it from a `keras.layers.BatchNormalization` layer.
      - `"batch"` (default): the views hold tensors, not layers, so the margin is estimated
        from the data: per channel, the mean of the teacher's negative values in the batch
        (weighted by the sample weights; stop-gradient; 0 for a channel with none).

    A batch-level term (returns a scalar): the connector's BatchNormalization normalises
    with the batch's statistics in training (as the paper's does), and the default margin is
    a batch statistic, so a sample's loss depends on the others anyway. The scalar is the
    sample-weighted mean `sum_i w_i L_i / sum_i w_i`; samples of weight 0 take no part in the
    connector's BN statistics nor in the margin (they leave no trace). On evaluation batches
    (`training=False`) the BN uses its moving statistics.

    Args:
        student_layer: name of the student layer (pre-ReLU) whose output is distilled.
        teacher_layer: name of the teacher layer (pre-ReLU, see above).
        margin: "batch" or a list of per-channel margins (see above).
        normalize: `> 0`, divides each sample's summed distance (official CIFAR code: 1000).
        weight: multiplier of this term (>= 0).
        name: metric prefix (`ofd_loss`).

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> bn = keras.layers.BatchNormalization()
    >>> bn.build((None, 8, 8, 4))
    >>> _ = bn.beta.assign([0.0, 1.0, -1.0, 0.5])
    >>> [round(float(m), 4) for m in tfkd.knowledge.OFD.margin_from_batch_norm(bn)]
    [-0.7979, -0.5251, -1.2876, -0.6411]
    >>> term = tfkd.knowledge.OFD("s_bn", "t_bn", margin=tfkd.knowledge.OFD.margin_from_batch_norm(bn))
    >>> term.build_term(View(None, {"t_bn": keras.KerasTensor((None, 8, 8, 4))}),
    ...                 View(None, {"s_bn": keras.KerasTensor((None, 4, 4, 2))}))
    >>> rng = np.random.default_rng(0)
    >>> t = View(None, {"t_bn": rng.normal(size=(2, 8, 8, 4)).astype("float32")})
    >>> s = View(None, {"s_bn": rng.normal(size=(2, 4, 4, 2)).astype("float32")})
    >>> term.loss(t, s).shape, float(term.loss(t, s)) > 0
    (TensorShape([]), True)
    """

    default_name = "ofd"
    aliases = ("overhaul",)
    example_args = {"student_layer": "student_map", "teacher_layer": "teacher_map"}

    def __init__(self, student_layer, teacher_layer, margin="batch", normalize=1000.0,
                 weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.student_layer = _check_layer_name("OFD", "student_layer", student_layer)
        self.teacher_layer = _check_layer_name("OFD", "teacher_layer", teacher_layer)
        self.margin = self._check_margin(margin)
        self.normalize = check_positive("normalize", normalize, "OFD")
        self.connector_conv = None
        self.connector_bn = None

    @staticmethod
    def _check_margin(margin):
        if isinstance(margin, str):
            if margin != "batch":
                raise ValueError(
                    f"OFD: `margin` must be 'batch' or a list of per-channel margins (e.g. "
                    f"OFD.margin_from_batch_norm(teacher_bn)), got {margin!r}."
                )
            return margin
        try:
            values = np.asarray(margin, dtype="float64")
        except (TypeError, ValueError):
            values = None
        if values is None or values.ndim != 1 or values.size == 0:
            raise ValueError(
                f"OFD: `margin` must be 'batch' or a non-empty 1-D list of per-channel "
                f"margins (one per teacher channel), got {margin!r}."
            )
        if not np.all(np.isfinite(values)) or np.any(values > 0):
            raise ValueError(
                "OFD: every margin must be a finite number <= 0 (the expected value of a "
                f"channel's negative responses), got {values.tolist()}."
            )
        return [float(v) for v in values]

    @staticmethod
    def margin_from_batch_norm(bn_layer):
        """The paper's per-channel margins from the teacher's pre-ReLU BatchNormalization.

        Assuming the BN's output of channel `c` is Gaussian with mean `beta_c` and standard
        deviation `|gamma_c|`, its expected negative value is (official `get_margin_from_BN`)

            m_c = beta_c - |gamma_c| phi(beta_c / |gamma_c|) / Phi(-beta_c / |gamma_c|)
                  if Phi(-beta_c / |gamma_c|) > 0.001, else -3 |gamma_c|

        (`phi`, `Phi`: the standard normal density and distribution function). A channel
        with `gamma_c = 0` (a constant output) gets `min(beta_c, 0)`. Returns a float32 NumPy
        array of the BN's channels, for `OFD(..., margin=...)`.
        """
        if not isinstance(bn_layer, keras.layers.BatchNormalization):
            raise TypeError(
                "OFD.margin_from_batch_norm: expected a keras.layers.BatchNormalization layer "
                f"(the teacher's pre-ReLU BN), got {type(bn_layer).__name__}."
            )
        if not bn_layer.built:
            raise ValueError(
                f"OFD.margin_from_batch_norm: the BatchNormalization layer {bn_layer.name!r} is "
                "not built; pass the trained teacher's layer."
            )
        channels = int(bn_layer.moving_mean.shape[0])
        gamma = (np.abs(ops.convert_to_numpy(bn_layer.gamma)).astype("float64")
                 if bn_layer.scale else np.ones(channels))
        beta = (ops.convert_to_numpy(bn_layer.beta).astype("float64")
                if bn_layer.center else np.zeros(channels))
        margins = []
        for s, m in zip(gamma, beta):
            if s == 0:
                margins.append(min(m, 0.0))
                continue
            cdf = 0.5 * math.erfc((m / s) / math.sqrt(2.0))  # Phi(-m / s)
            if cdf > 0.001:
                pdf = math.exp(-((m / s) ** 2) / 2.0) / math.sqrt(2.0 * math.pi)
                margins.append(m - s * pdf / cdf)
            else:
                margins.append(-3.0 * s)
        return np.asarray(margins, dtype="float32")

    def build_term(self, teacher, student):
        t = _feature(teacher, self.teacher_layer, "teacher", "OFD")
        s = _feature(student, self.student_layer, "student", "OFD")
        where = f"OFD({self.student_layer!r} -> {self.teacher_layer!r})"
        if len(t.shape) != 4 or len(s.shape) != 4:
            raise ValueError(
                f"{where}: OFD distils 4-D feature maps (batch, height, width, channels); got "
                f"student {tuple(s.shape)} and teacher {tuple(t.shape)}. Tap the pre-ReLU "
                "output of a convolutional stage."
            )
        c_t, c_s = t.shape[-1], s.shape[-1]
        if c_t is None or c_s is None:
            raise ValueError(
                f"{where}: the channel (last) dimension must be known; got student "
                f"{tuple(s.shape)} and teacher {tuple(t.shape)}."
            )
        if self.margin != "batch" and len(self.margin) != c_t:
            raise ValueError(
                f"{where}: `margin` has {len(self.margin)} values but the teacher feature has "
                f"{c_t} channels; give one margin per teacher channel."
            )
        if self.connector_conv is None:
            self.connector_conv = keras.layers.Conv2D(
                c_t, 1, use_bias=False, dtype="float32", name=f"{self.name}_connector_conv",
                kernel_initializer=keras.initializers.VarianceScaling(
                    2.0, mode="fan_out", distribution="untruncated_normal"))
            self.connector_conv.build(tuple(s.shape))
            # PyTorch's BatchNorm2d defaults, as the official connector: momentum 0.1
            # (Keras' 0.9), epsilon 1e-5.
            self.connector_bn = keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, dtype="float32", name=f"{self.name}_connector_bn")
            self.connector_bn.build(tuple(s.shape[:-1]) + (c_t,))
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        if self.connector_conv is None:
            raise ValueError("OFD: call `build_term` (the Distiller does) before computing.")
        t = ops.stop_gradient(as_float32(_feature(teacher, self.teacher_layer, "teacher", "OFD")))
        s = as_float32(_feature(student, self.student_layer, "student", "OFD"))
        batch = ops.shape(t)[0]
        if sample_weight is None:
            w, mask = ops.ones((batch,), "float32"), None
        else:
            w = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            mask = ops.broadcast_to(w[:, None, None] > 0, ops.shape(s)[:-1])
        s = self.connector_conv(s)
        s = self.connector_bn(s, training=getattr(self, "training_step", True), mask=mask)
        s = _resize_like(s, t)
        if self.margin == "batch":
            negative = w[:, None, None, None] * ops.cast(t < 0, "float32")
            margin = ops.divide_no_nan(ops.sum(negative * t, axis=(0, 1, 2)),
                                       ops.sum(negative, axis=(0, 1, 2)))
            margin = ops.stop_gradient(margin)
        else:
            margin = ops.convert_to_tensor(np.asarray(self.margin, "float32"))
        target = ops.maximum(t, margin)
        keep = ops.logical_or(s > target, target > 0)
        dist = ops.where(keep, ops.square(s - target), 0.0)
        per_sample = ops.sum(ops.reshape(dist, (batch, -1)), axis=-1) / self.normalize
        return ops.divide_no_nan(ops.sum(w * per_sample), ops.sum(w))

    def get_config(self):
        config = super().get_config()
        config.update(student_layer=self.student_layer, teacher_layer=self.teacher_layer,
                      margin=self.margin, normalize=self.normalize)
        return config
