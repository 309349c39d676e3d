"""Image-to-image knowledge (super-resolution, restoration): what the teacher says per pixel
of its output image and about how its features relate across positions.

Outputs are images, channels-last `(batch, height, width, channels)`, on the model's own
pixel scale (tfkd's SR models: [0, 255]); features are tapped maps at the low resolution.
The ground-truth term is the Distiller's compiled loss (an SR user compiles with
`keras.losses.MeanAbsoluteError()`); `student_loss_weight` against each term's `weight` is
the balance the papers tune. Math is float32.

- `ReconstructionKD`: the student's image regresses the teacher's (L1 by default), the
  output distillation of SR KD papers.
- `FeatureAffinityKD` (FAKD): the student keeps the teacher's spatial affinity matrices.
- `Hint` (`tfkd.knowledge.feature`) works on SR feature maps as they are.
"""
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.dense import PairwiseKD

_LOSSES = ("l1", "l2")


class ReconstructionKD(Knowledge):
    """Output distillation for image-to-image models: the student's image regresses the
    teacher's.

    With student image `S` and teacher image `T` (the same shape), per sample `i`:

        L_i = mean_j |S[i, j] - T[i, j]|          (loss="l1", the default)
        L_i = mean_j (S[i, j] - T[i, j])^2        (loss="l2")

    over every pixel and channel `j`. L1 because SR students train on L1 (EDSR's finding, and
    what the SR distillation papers use for the teacher term too); the teacher's image is a
    target, never differentiated. The images are compared on the models' pixel scale, so a
    weight that balances it against a ground-truth L1 in pixels is in the same units.

    Args:
        loss: "l1" or "l2".
        output: which output of a multi-output model (an index or name); None for the only one.
        weight: multiplier of this term (>= 0).
        name: metric prefix (`reconstruction_kd_loss`).

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.ReconstructionKD()
    >>> t = View(np.full((2, 4, 4, 1), 100.0, "float32"))
    >>> s = View(np.full((2, 4, 4, 1), 97.0, "float32"))
    >>> float(term.loss(t, s))
    3.0
    """

    default_name = "reconstruction_kd"
    aliases = ("output_kd", "sr_output")
    example_inputs = "image"
    example_args = {}

    def __init__(self, loss="l1", output=None, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        if loss not in _LOSSES:
            raise ValueError(f"ReconstructionKD: `loss` must be one of {_LOSSES}, got {loss!r}.")
        if output is not None and not isinstance(output, (int, str)):
            raise TypeError(f"ReconstructionKD: `output` must be an index, a name or None, got "
                            f"{output!r}.")
        self.loss_kind, self.output_selector = loss, output

    def build_term(self, teacher, student):
        if teacher is None:
            raise ValueError("ReconstructionKD needs a teacher: pass `teacher=` to the "
                             "Distiller.")
        t, s = teacher.output(self.output_selector), student.output(self.output_selector)
        if len(s.shape) != 4 or len(t.shape) != 4:
            raise ValueError(
                f"ReconstructionKD compares output images (batch, height, width, channels); "
                f"got teacher {tuple(t.shape)} and student {tuple(s.shape)}. Point it at the "
                "image output with `output=`.")
        for a, b in zip(t.shape[1:], s.shape[1:]):
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"ReconstructionKD: the teacher's image {tuple(t.shape)} and the student's "
                    f"{tuple(s.shape)} differ in size or channels; both must super-resolve "
                    "at the same scale into the same channels (Y or RGB).")
        super().build_term(teacher, student)

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        t = ops.stop_gradient(as_float32(teacher.output(self.output_selector)))
        s = as_float32(student.output(self.output_selector))
        d = ops.abs(s - t) if self.loss_kind == "l1" else ops.square(s - t)
        return ops.mean(ops.reshape(d, (ops.shape(d)[0], -1)), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(loss=self.loss_kind, output=self.output_selector)
        return config


class FeatureAffinityKD(PairwiseKD):
    """FAKD: the student's feature map keeps the spatial affinities of the teacher's.

    Paper: Z. He, T. Dai, J. Lu, Y. Jiang, S.-T. Xia, "FAKD: Feature-Affinity Based Knowledge
    Distillation for Efficient Image Super-Resolution", ICIP 2020.

    Each feature map `F` (positions x channels) has its feature at each position
    L2-normalised over channels, and the affinity of positions `j`, `k` is their cosine
    similarity; per image, over all `N^2` ordered pairs of its `N` positions:

        A_jk = f_j . f_k / (|f_j| |f_k|)
        L_i  = mean_{j,k} |A^s_ijk - A^t_ijk|

    This is `PairwiseKD` at `node_size=1` with the L1 distance FAKD uses (one implementation
    of the affinity); channel counts may differ (only affinities are compared), and a
    student map of another size is resized bilinearly to the teacher's. The cost is
    `N^2` per image: a 48 x 48 LR patch gives 2304 positions, a 5.3M-entry matrix per image
    and side, so a large patch wants `node_size=2` (4x fewer positions, 16x less memory).

    Args:
        student_layer / teacher_layer: names of the tapped feature maps (both required).
        node_size: average-pool positions into nodes of this side first (1: every pixel).
        weight: multiplier of this term (>= 0).
        name: metric prefix (`feature_affinity_kd_loss`).

    Example:

    >>> import numpy as np, tfkd
    >>> from tfkd.knowledge import View
    >>> rng = np.random.default_rng(0)
    >>> term = tfkd.knowledge.FeatureAffinityKD("mapping", "body")
    >>> t = View(None, {"body": rng.normal(size=(2, 6, 6, 16)).astype("float32")})
    >>> s = View(None, {"mapping": rng.normal(size=(2, 6, 6, 8)).astype("float32")})
    >>> term.compute(t, s).shape
    TensorShape([2])
    """

    default_name = "feature_affinity_kd"
    aliases = ("fakd",)
    example_inputs = "image"
    example_args = {"student_layer": "student_map", "teacher_layer": "teacher_map"}

    def __init__(self, student_layer, teacher_layer, node_size=1, weight=1.0, name=None,
                 **kwargs):
        kwargs.pop("distance", None)  # a config of this class stores FAKD's own distance
        kwargs.pop("output", None)
        super().__init__(node_size=node_size, student_layer=student_layer,
                         teacher_layer=teacher_layer, distance="l1", weight=weight, name=name,
                         **kwargs)
