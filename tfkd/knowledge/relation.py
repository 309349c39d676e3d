"""Relation-based knowledge: how the teacher relates the samples of a batch to each other.

These terms look at the whole batch, so they return a scalar and apply sample weights
themselves: a pair (i, j) counts with weight `w_i * w_j`, a triplet with `w_i * w_j * w_k`,
and every mean is a weighted mean (a sample of weight 0 leaves no trace, weight 2 counts like
two copies where stated). Math is float32.

DIST relates predictions: each sample's class probabilities (across the classes) and each
class's probabilities (across the batch), on logits; PKT relates the samples' features
through their neighbour probabilities.
"""
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_non_negative
from tfkd.knowledge.base import check_positive
from tfkd.knowledge.feature import _check_layer_name
from tfkd.knowledge.feature import _feature
from tfkd.knowledge.response import _ResponseTerm
from tfkd.knowledge.response import _check_logits

_EPS = 1e-12


def _flat(x):
    x = as_float32(x)
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _weights(sample_weight, batch_like):
    if sample_weight is None:
        return ops.ones((ops.shape(batch_like)[0],), dtype="float32")
    return ops.reshape(ops.cast(sample_weight, "float32"), (-1,))


def _huber(x):
    """Smooth L1 (Huber with delta = 1): 0.5 x^2 if |x| < 1 else |x| - 0.5."""
    ax = ops.abs(x)
    return ops.where(ax < 1.0, 0.5 * ops.square(x), ax - 0.5)


def _centered_gram(x):
    """Gram matrix of the batch after removing its mean.

    Distances and angles do not change under a translation; centring first keeps the
    Gram-matrix identities below accurate in float32 when features share a large offset
    (e.g. post-ReLU activations).
    """
    x = x - ops.mean(x, axis=0, keepdims=True)
    return ops.matmul(x, ops.transpose(x))


def _pairwise_distances(gram, off_diagonal):
    """Euclidean distances (B, B) from the Gram matrix; the diagonal is set to 0.

    `sqrt(max(d^2, eps))` keeps the gradient finite where two samples coincide.
    """
    sq = ops.diagonal(gram)
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    return ops.sqrt(ops.maximum(d2, _EPS)) * off_diagonal


def _angles(gram, dist, valid):
    """cos of the angle at vertex j between samples i and k, as out[j, i, k].

    <x_i - x_j, x_k - x_j> = G_ik - G_ij - G_jk + G_jj, divided by d_ij d_jk: O(B^3) memory
    and no (B, B, features) tensor. Degenerate triplets (`valid` = 0) get 0.
    """
    diag = ops.diagonal(gram)
    num = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diag[:, None, None]
    den = dist[:, :, None] * dist[:, None, :]
    safe_den = ops.where(valid > 0, den, 1.0)
    return ops.where(valid > 0, num / safe_den, 0.0)


class RelationalKD(Knowledge):
    """Relational KD: the student keeps the teacher's distances and angles between samples.

    Paper: W. Park, D. Kim, Y. Lu, M. Cho, "Relational Knowledge Distillation", CVPR 2019.

    With embeddings `t_i` (teacher) and `s_i` (student) of the batch (flattened features of
    the named layers, or the outputs when no layer is named), sample weights `w_i` (1 when
    none), and the smooth L1 loss `l(x) = 0.5 x^2 if |x| < 1 else |x| - 0.5`:

        pairs    P = {(i, j): i != j},            w_ij  = w_i w_j
        triplets A = {(i, j, k) all distinct},    w_ijk = w_i w_j w_k
        mu       = sum_P w_ij ||t_i - t_j|| / sum_P w_ij       (likewise for the student)
        psi_D(i, j)    = ||t_i - t_j|| / mu
        psi_A(i, j, k) = < (t_i - t_j) / ||t_i - t_j||, (t_k - t_j) / ||t_k - t_j|| >
        L_D = sum_P w_ij  l(psi_D^s - psi_D^t) / sum_P w_ij
        L_A = sum_A w_ijk l(psi_A^s - psi_A^t) / sum_A w_ijk
        L   = distance * L_D + angle * L_A

    The means run over distinct pairs / triplets. (RepDistiller's implementation averages
    over all B^2 resp. B^3 entries, degenerate ones included, which scales L_D by (B-1)/B and
    L_A by (B-1)(B-2)/B^2.) Teacher and student embeddings may have different widths.
    A batch of fewer than 2 (3) samples with non-zero weight gives L_D (L_A) = 0.
    Memory is O(B^2 + B^3) floats (the angle term builds (B, B, B) tensors): about 70 MB
    per tensor at B = 256; distances and angles come from the Gram matrix, so the feature
    width does not multiply it.

    Args:
        distance: weight of the distance-wise loss (>= 0); paper: 25 for metric learning,
            1 is common for classification.
        angle: weight of the angle-wise loss (>= 0); paper: 50, resp. 2.
        student_layer / teacher_layer: feature names; both or neither (then the outputs).
        output: which output to use when no layer is named, for multi-output models.
        weight: multiplier of this term (>= 0).
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> term = tfkd.knowledge.RelationalKD(distance=1.0, angle=2.0)
    >>> t = View(rng.normal(size=(8, 10)).astype("float32"))
    >>> s = View(rng.normal(size=(8, 10)).astype("float32"))
    >>> float(term.loss(t, s)) > 0
    True
    """

    default_name = "rkd"
    example_args = {"distance": 25.0, "angle": 50.0, "student_layer": "student_vec",
                    "teacher_layer": "teacher_vec"}

    def __init__(self, distance=1.0, angle=2.0, student_layer=None, teacher_layer=None,
                 output=None, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.distance = check_non_negative("distance", distance, "RelationalKD")
        self.angle = check_non_negative("angle", angle, "RelationalKD")
        if (student_layer is None) != (teacher_layer is None):
            raise ValueError(
                "RelationalKD: give both `student_layer` and `teacher_layer` (to relate "
                "intermediate features) or neither (to relate the outputs); got "
                f"student_layer={student_layer!r}, teacher_layer={teacher_layer!r}."
            )
        if student_layer is not None:
            _check_layer_name("RelationalKD", "student_layer", student_layer)
            _check_layer_name("RelationalKD", "teacher_layer", teacher_layer)
        if output is not None and not isinstance(output, (int, str)):
            raise TypeError(f"RelationalKD: `output` must be an index, a name or None, got {output!r}.")
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer
        self.output_selector = output

    def _embedding(self, view, side):
        if self.student_layer is None:
            if view is None:
                raise ValueError("RelationalKD needs a teacher: pass `teacher=` to the Distiller.")
            return view.output(self.output_selector)
        name = self.teacher_layer if side == "teacher" else self.student_layer
        return _feature(view, name, side, "RelationalKD")

    def build_term(self, teacher, student):
        for view, side in ((teacher, "teacher"), (student, "student")):
            x = self._embedding(view, side)
            if len(x.shape) < 2:
                raise ValueError(
                    f"RelationalKD: the {side} embedding has shape {tuple(x.shape)}; it needs a "
                    "batch axis and at least one feature axis."
                )
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t = _flat(self._embedding(teacher, "teacher"))
        s = _flat(self._embedding(student, "student"))
        w = _weights(sample_weight, t)
        off_diagonal = 1.0 - ops.eye(ops.shape(t)[0], dtype="float32")
        w_pair = w[:, None] * w[None, :] * off_diagonal
        g_t, g_s = _centered_gram(t), _centered_gram(s)
        d_t, d_s = _pairwise_distances(g_t, off_diagonal), _pairwise_distances(g_s, off_diagonal)
        total = 0.0
        if self.distance:
            w_sum = ops.sum(w_pair)
            psi_t = ops.divide_no_nan(d_t, ops.divide_no_nan(ops.sum(w_pair * d_t), w_sum))
            psi_s = ops.divide_no_nan(d_s, ops.divide_no_nan(ops.sum(w_pair * d_s), w_sum))
            loss_d = ops.divide_no_nan(ops.sum(w_pair * _huber(psi_s - psi_t)), w_sum)
            total = total + self.distance * loss_d
        if self.angle:
            # valid[j, i, k] = 1 when i, j, k are distinct (j is the vertex).
            valid = (off_diagonal[:, :, None] * off_diagonal[:, None, :]
                     * off_diagonal[None, :, :])
            w_tri = w[:, None, None] * w[None, :, None] * w[None, None, :] * valid
            diff = _angles(g_s, d_s, valid) - _angles(g_t, d_t, valid)
            loss_a = ops.divide_no_nan(ops.sum(w_tri * _huber(diff)), ops.sum(w_tri))
            total = total + self.angle * loss_a
        return ops.convert_to_tensor(total, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            distance=self.distance,
            angle=self.angle,
            student_layer=self.student_layer,
            teacher_layer=self.teacher_layer,
            output=self.output_selector,
        )
        return config


class SimilarityPreserving(Knowledge):
    """Similarity-preserving KD: the student keeps the teacher's batch similarity matrix.

    Paper: F. Tung, G. Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

    With `A` the (b, -1) flattened activations of the named layer on each side:

        G       = A A^T                                   (b x b)
        G~[i]   = G[i] / ||G[i]||_2                       (row-wise L2 normalisation)
        L       = ||G~_t - G~_s||_F^2 / b^2

    Sample weights: a sample of weight `w` counts like `w` copies of it, so that

        ||G[i]||^2 = sum_k w_k G[i, k]^2,   L = sum_ij w_i w_j (G~_t - G~_s)[i, j]^2 / (sum_i w_i)^2

    which is the formula above when all weights are 1, and drops a sample of weight 0
    entirely. Feature widths may differ between teacher and student.

    Args:
        student_layer: name of the student layer.
        teacher_layer: name of the teacher layer.
        weight: multiplier of this term (>= 0); the paper's gamma (3000 on CIFAR-10).
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> term = tfkd.knowledge.SimilarityPreserving("s_block", "t_block")
    >>> t = View(None, {"t_block": rng.normal(size=(4, 8, 8, 32)).astype("float32")})
    >>> s = View(None, {"s_block": rng.normal(size=(4, 4, 4, 16)).astype("float32")})
    >>> float(term.loss(t, s)) > 0
    True
    """

    default_name = "similarity"
    example_args = {"student_layer": "student_map", "teacher_layer": "teacher_map"}

    def __init__(self, student_layer, teacher_layer, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.student_layer = _check_layer_name("SimilarityPreserving", "student_layer",
                                               student_layer)
        self.teacher_layer = _check_layer_name("SimilarityPreserving", "teacher_layer",
                                               teacher_layer)

    def build_term(self, teacher, student):
        for view, name, side in ((teacher, self.teacher_layer, "teacher"),
                                 (student, self.student_layer, "student")):
            f = _feature(view, name, side, "SimilarityPreserving")
            if len(f.shape) < 2:
                raise ValueError(
                    f"SimilarityPreserving: the {side} feature {name!r} has shape "
                    f"{tuple(f.shape)}; it needs a batch axis and feature values."
                )
        super().build_term(teacher, student)

    @staticmethod
    def _similarity(a, w):
        g = ops.matmul(a, ops.transpose(a))
        norm2 = ops.sum(w[None, :] * ops.square(g), axis=-1, keepdims=True)
        return g * ops.rsqrt(ops.maximum(norm2, _EPS))

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        a_t = _flat(_feature(teacher, self.teacher_layer, "teacher", "SimilarityPreserving"))
        a_s = _flat(_feature(student, self.student_layer, "student", "SimilarityPreserving"))
        w = _weights(sample_weight, a_t)
        diff = self._similarity(a_t, w) - self._similarity(a_s, w)
        w_pair = w[:, None] * w[None, :]
        return ops.divide_no_nan(ops.sum(w_pair * ops.square(diff)), ops.square(ops.sum(w)))

    def get_config(self):
        config = super().get_config()
        config.update(student_layer=self.student_layer, teacher_layer=self.teacher_layer)
        return config


def _safe_norm(squared):
    """sqrt of a sum of squares, 0 where it is 0, with a finite gradient there."""
    positive = squared > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)


def _weighted_pearson(a, b, w, axis, eps):
    """Pearson correlation of `a` and `b` along `axis`, each entry counted `w` times.

    `w` broadcasts against `a`; mean, covariance and norms are weighted sums, and
    `rho = <a~, b~>_w / (||a~||_w ||b~||_w + eps)` with `a~ = a - mean_w(a)` (the cosine of
    the centred vectors, as the DIST authors' `pearson_correlation`). A constant vector gives
    rho = 0.
    """
    total = ops.sum(w * ops.ones_like(a), axis=axis, keepdims=True)
    a = a - ops.divide_no_nan(ops.sum(w * a, axis=axis, keepdims=True), total)
    b = b - ops.divide_no_nan(ops.sum(w * b, axis=axis, keepdims=True), total)
    num = ops.sum(w * a * b, axis=axis)
    norm_a = _safe_norm(ops.sum(w * ops.square(a), axis=axis))
    norm_b = _safe_norm(ops.sum(w * ops.square(b), axis=axis))
    return num / (norm_a * norm_b + eps)


class DIST(_ResponseTerm):
    """DIST: the student keeps the teacher's correlations between classes and between samples.

    Paper: T. Huang, S. You, F. Wang, C. Qian, C. Xu, "Knowledge Distillation from A Stronger
    Teacher", NeurIPS 2022 (arXiv:2205.10536); the loss follows the authors' `dist_kd.py`
    (github.com/hunto/image_classification_sota, the classification code of
    github.com/hunto/DIST_KD).

    With logits `z` of shape `(B, C)` on each side, temperature `tau`, `P = softmax(z / tau)`
    (a `(B, C)` matrix per side) and the Pearson correlation as the authors compute it,

        rho(a, b) = <a - mean(a), b - mean(b)> / (||a - mean(a)|| ||b - mean(b)|| + 1e-8),

    the loss is

        inter = mean_i (1 - rho(P_s[i, :], P_t[i, :]))      (each sample, across classes)
        intra = mean_c (1 - rho(P_s[:, c], P_t[:, c]))      (each class, across the batch)
        L     = tau^2 * (beta * inter + gamma * intra)

    Pearson's correlation is invariant to a shift and a positive scaling of either side: the
    student matches the teacher's relations, not its exact probabilities, which the authors
    show helps most when the teacher is much stronger than the student.

    The class-wise part looks across the batch, so the term returns a scalar and applies
    sample weights itself: a sample of weight `w_i` counts like `w_i` copies of it, i.e.
    `inter` is the `w`-weighted mean over samples and, in `intra`, the means, the inner
    product and the norms along the batch are `w`-weighted sums. A sample of weight 0 leaves
    no trace. (A batch of one sample has no class-wise relation: its `intra` is 1, a
    constant, as in the authors' code.) A constant probability vector (an exactly uniform
    student, e.g. a zero-initialised head) correlates 0 with anything: the loss stays finite,
    but its gradient is of order 1/eps = 1e8 times the teacher's centred probabilities, as
    with the authors' eps; any non-constant prediction brings it back to normal.

    Defaults are the authors' `DIST(beta=1.0, gamma=1.0, tau=1.0)`, their ImageNet setting
    (`kd: dist`, with KD loss weight 2 and CE weight 1). On CIFAR-100 they use `tau = 4`
    (`kd: dist_t4`, KD weight 2, CE weight 1), i.e. `DIST(temperature=4.0, weight=2.0)`.

    Args:
        beta: weight of the inter-class (per-sample) relation (>= 0); 1.
        gamma: weight of the intra-class (per-class, across the batch) relation (>= 0); 1.
        temperature: softmax temperature `tau > 0`; 1 (the authors use 4 on CIFAR-100).
        output: for multi-output models, which output holds the logits (index or name).
        weight: multiplier of this term (>= 0), or a schedule of it.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> t = View(np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.5]], "float32"))
    >>> s = View(np.array([[1.0, 1.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]], "float32"))
    >>> term = tfkd.knowledge.DIST()
    >>> round(float(term.loss(t, s)), 4)
    0.6988
    >>> round(float(term.loss(t, t)), 4)  # the same predictions: no loss
    0.0
    >>> cifar = tfkd.knowledge.get("dist:temperature=4,weight=2")  # the authors' CIFAR-100
    >>> round(float(cifar.loss(t, s)), 4), cifar.weight  # `loss` is before `weight`
    (10.4088, 2.0)
    """

    default_name = "dist"
    example_args = {"beta": 1.0, "gamma": 2.0, "temperature": 4.0}

    _PEARSON_EPS = 1e-8  # the authors' eps in `cosine_similarity`

    def __init__(self, beta=1.0, gamma=1.0, temperature=1.0, output=None, weight=1.0,
                 name=None, **kwargs):
        super().__init__(weight=weight, output=output, name=name, **kwargs)
        self.beta = check_non_negative("beta", beta, "DIST")
        self.gamma = check_non_negative("gamma", gamma, "DIST")
        self.temperature = check_positive("temperature", temperature, "DIST")

    def build_term(self, teacher, student):
        _check_logits("DIST", teacher, student, self.output_selector, min_classes=2)
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        if teacher is None:
            raise ValueError("DIST needs a teacher: pass `teacher=` to the Distiller.")
        tau = self.temperature
        p_t = ops.softmax(self._logits(teacher) / tau, axis=-1)
        p_s = ops.softmax(self._logits(student) / tau, axis=-1)
        w = _weights(sample_weight, p_t)
        w_sum = ops.sum(w)
        inter_rho = _weighted_pearson(p_s, p_t, 1.0, axis=1, eps=self._PEARSON_EPS)
        inter = ops.divide_no_nan(ops.sum(w * (1.0 - inter_rho)), w_sum)
        intra_rho = _weighted_pearson(p_s, p_t, w[:, None], axis=0, eps=self._PEARSON_EPS)
        intra = ops.where(w_sum > 0, ops.mean(1.0 - intra_rho), 0.0)
        return (tau * tau) * (self.beta * inter + self.gamma * intra)

    def get_config(self):
        config = super().get_config()
        config.update(beta=self.beta, gamma=self.gamma, temperature=self.temperature)
        return config


class PKT(Knowledge):
    """Probabilistic knowledge transfer: the student keeps the teacher's neighbour probabilities.

    Paper: N. Passalis, A. Tefas, "Learning Deep Representations with Probabilistic
    Knowledge Transfer", ECCV 2018; the loss follows the authors' `cosine_similarity_loss`
    (github.com/passalis/probabilistic_kt, `nn/pkt.py`).

    With `x_i` the flattened feature of sample `i` on one side, `eps` (1e-7) and sample
    weights `w_i` (1 when none):

        x^_i    = x_i / (||x_i|| + eps)
        K[i, j] = (<x^_i, x^_j> + 1) / 2                  (cosine similarity mapped to [0, 1])
        P[i, j] = K[i, j] / sum_k w_k K[i, k]             (conditional probability of j given i)
        KL_i    = sum_j w_j P_t[i, j] log((P_t[i, j] + eps) / (P_s[i, j] + eps))
        L       = sum_i w_i KL_i / sum_i w_i

    Rows run over the whole batch, the diagonal `j = i` included, as in the authors' code.
    With all weights 1 this is the paper's KL divergence between the teacher's and the
    student's conditional distributions, averaged over the rows `i`; a sample of weight `w`
    counts like `w` copies of it (its row and its column), and a sample of weight 0 leaves no
    trace. Only similarities are compared: teacher and student widths may differ.

    Scale: the authors' code reduces with `torch.mean` over all `B x B` entries, which is `L`
    divided by the batch size `B`; a loss weight `lambda` of theirs (RepDistiller's CIFAR-100
    setting is 30000) is `weight = lambda / B` here.

    Args:
        student_layer: name of the student layer.
        teacher_layer: name of the teacher layer.
        eps: the authors' small constant in the normalisation and the logarithm (> 0); 1e-7.
        weight: multiplier of this term (>= 0), or a schedule of it.
        name: metric prefix.

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> t = View(None, {"t_emb": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "float32")})
    >>> s = View(None, {"s_emb": np.array([[1.0, 0.0, 0.0], [1.0, 0.2, 0.0],
    ...                                    [0.0, 0.0, 1.0]], "float32")})
    >>> term = tfkd.knowledge.PKT("s_emb", "t_emb")
    >>> round(float(term.loss(t, s)), 4)
    0.0817
    >>> round(float(term.loss(t, View(None, {"s_emb": t.features["t_emb"]}))), 4)
    0.0
    """

    default_name = "pkt"
    aliases = ("probabilistic_kt",)
    example_args = {"student_layer": "student_vec", "teacher_layer": "teacher_vec"}

    def __init__(self, student_layer, teacher_layer, eps=1e-7, weight=1.0, name=None,
                 **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.student_layer = _check_layer_name("PKT", "student_layer", student_layer)
        self.teacher_layer = _check_layer_name("PKT", "teacher_layer", teacher_layer)
        self.eps = check_positive("eps", eps, "PKT")

    def build_term(self, teacher, student):
        for view, name, side in ((teacher, self.teacher_layer, "teacher"),
                                 (student, self.student_layer, "student")):
            f = _feature(view, name, side, "PKT")
            if len(f.shape) < 2:
                raise ValueError(
                    f"PKT: the {side} feature {name!r} has shape {tuple(f.shape)}; it needs a "
                    "batch axis and feature values."
                )
        super().build_term(teacher, student)

    def _conditional(self, x, w):
        norm = _safe_norm(ops.sum(ops.square(x), axis=-1, keepdims=True))
        x = x / (norm + self.eps)
        k = (ops.matmul(x, ops.transpose(x)) + 1.0) / 2.0
        return ops.divide_no_nan(k, ops.sum(w[None, :] * k, axis=-1, keepdims=True))

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        x_t = _flat(_feature(teacher, self.teacher_layer, "teacher", "PKT"))
        x_s = _flat(_feature(student, self.student_layer, "student", "PKT"))
        w = _weights(sample_weight, x_t)
        p_t, p_s = self._conditional(x_t, w), self._conditional(x_s, w)
        log_ratio = ops.log(p_t + self.eps) - ops.log(p_s + self.eps)
        kl = ops.sum(w[None, :] * p_t * log_ratio, axis=-1)
        return ops.divide_no_nan(ops.sum(w * kl), ops.sum(w))

    def get_config(self):
        config = super().get_config()
        config.update(student_layer=self.student_layer, teacher_layer=self.teacher_layer,
                      eps=self.eps)
        return config
