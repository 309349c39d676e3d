"""Contrastive knowledge: the student's embedding of a sample must pick out the teacher's.

CRD (contrastive representation distillation) maximises a lower bound on the mutual
information between the teacher's and the student's representations: each sample's student
embedding is pulled to the teacher's embedding of the same sample (the positive) and pushed
from the teacher's embeddings of other samples (the negatives), and the other way round.
The negatives come from the batch and from a memory of past batches kept by the term.
"""
import math

import keras
import tensorflow as tf
from keras import ops

from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.base import as_float32
from tfkd.knowledge.base import check_count
from tfkd.knowledge.base import check_positive
from tfkd.knowledge.feature import _check_layer_name
from tfkd.knowledge.feature import _feature

_EPS = 1e-12
_NEG = -1e9  # added to a logit to take its column out of a softmax (exp gives exactly 0)


def _l2_normalise(x):
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), _EPS))


def _flat(x):
    return ops.reshape(as_float32(x), (ops.shape(x)[0], -1))


class CRD(Knowledge):
    """Contrastive representation distillation: an InfoNCE bound on teacher-student information.

    Paper: Y. Tian, D. Krishnan, P. Isola, "Contrastive Representation Distillation",
    ICLR 2020 (code: github.com/HobbitLong/RepDistiller).

    Each side's tapped feature (flattened; the paper taps the pooled penultimate vector) goes
    through its own embedding head, a `Dense(embedding_dim)` followed by L2 normalisation
    (the paper's `Embed`; both heads are adapters: trained with the student, checkpointed,
    never exported). With `e^s_i`, `e^t_i` the embeddings of sample `i`, temperature `T`, and
    the negatives of a side = the other side's embeddings of the other samples of the batch
    plus the other side's embeddings kept in the memory (`m^t_k`, `m^s_k`):

        l^s_i = -log( exp(e^s_i . e^t_i / T) / (sum_j exp(e^s_i . e^t_j / T) + sum_k exp(e^s_i . m^t_k / T)) )
        l^t_i = -log( exp(e^t_i . e^s_i / T) / (sum_j exp(e^t_i . e^s_j / T) + sum_k exp(e^t_i . m^s_k / T)) )
        L     = sum_i w_i (l^s_i + l^t_i) / 2  /  sum_i w_i

    Both directions are the paper's (student anchor against teacher negatives, teacher anchor
    against student negatives). Two choices differ from the paper, and why:

    - The paper's memory is a bank of one embedding per training sample, indexed by the
      sample's dataset index and updated by momentum; `fit` hands a train step no dataset
      indices, so the memory here is a FIFO queue of the last `memory_size` embeddings of
      each side (MoCo's queue, which needs none). It is non-trainable state of the term
      (updated by writing, not by gradients), saved with the trainer's checkpoints and never
      exported. Each training call reads the queue, then pushes this batch's embeddings
      (stop-gradient; samples of weight 0 and non-finite embeddings are never stored).
      Evaluation calls (`loss(..., training=False)`) read it and push nothing.
    - The paper's loss is NCE (a binary classifier of positive vs 16384 sampled negatives);
      this is its softmax form, InfoNCE (CRD's own appendix and later work, e.g. the
      authors' CMC / SupCon code, use it): the same bound, no noise-distribution constant.

    The term is batch-level (negatives come from the other samples): it returns a scalar,
    and a sample of weight 0 leaves no trace (neither a row, nor a negative column, nor a
    memory entry).

    Args:
        student_layer: the student's tapped layer (e.g. its global pooling).
        teacher_layer: the teacher's tapped layer.
        embedding_dim: width of the embedding heads (paper: 128).
        temperature: `T > 0` of the softmax (paper: 0.07).
        memory_size: embeddings of past batches kept per side as negatives (an integer >= 0;
            0: the batch only). The paper draws 16384 negatives from its bank.
        weight: multiplier (>= 0), or a schedule of it; the paper uses 0.8 beside the
            cross-entropy on CIFAR-100.
        name: metric prefix.

    Example:

    >>> import numpy as np, keras, tfkd
    >>> from tfkd.knowledge import View
    >>> term = tfkd.knowledge.CRD("s_pool", "t_pool", embedding_dim=16, memory_size=64)
    >>> term.build_term(View(None, {"t_pool": keras.KerasTensor((None, 32))}),
    ...                 View(None, {"s_pool": keras.KerasTensor((None, 8))}))
    >>> rng = np.random.default_rng(0)
    >>> t = View(None, {"t_pool": rng.normal(size=(4, 32)).astype("float32")})
    >>> s = View(None, {"s_pool": rng.normal(size=(4, 8)).astype("float32")})
    >>> loss = float(term.loss(t, s))  # reads the empty queue, then stores these 4 samples
    >>> int(term.memory_valid.numpy().sum()), loss > 0
    (4, True)
    """

    default_name = "crd"
    aliases = ("contrastive_representation_distillation",)
    example_args = {"student_layer": "student_vec", "teacher_layer": "teacher_vec",
                    "embedding_dim": 4, "temperature": 0.5, "memory_size": 0}

    def __init__(self, student_layer, teacher_layer, embedding_dim=128, temperature=0.07,
                 memory_size=4096, weight=1.0, name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        owner = "CRD"
        self.student_layer = _check_layer_name(owner, "student_layer", student_layer)
        self.teacher_layer = _check_layer_name(owner, "teacher_layer", teacher_layer)
        self.embedding_dim = check_count("embedding_dim", embedding_dim, owner)
        self.temperature = check_positive("temperature", temperature, owner)
        self.memory_size = check_count("memory_size", memory_size, owner, minimum=0)
        self.student_head = self.teacher_head = None
        self.memory_teacher = None

    def build_term(self, teacher, student):
        if self.student_head is not None:
            return super().build_term(teacher, student)
        sizes = {}
        for view, layer, side in ((teacher, self.teacher_layer, "teacher"),
                                  (student, self.student_layer, "student")):
            shape = tuple(_feature(view, layer, side, "CRD").shape)
            if len(shape) < 2 or any(d is None for d in shape[1:]):
                raise ValueError(
                    f"CRD: the {side} feature {layer!r} has shape {shape}; the embedding head "
                    "needs a known size per sample. Tap a pooled vector (e.g. the global "
                    "pooling layer) or a map of fixed size.")
            sizes[side] = math.prod(shape[1:])
        dense = lambda side: keras.layers.Dense(self.embedding_dim, dtype="float32",
                                                name=f"{self.name}_{side}_head")
        self.student_head, self.teacher_head = dense("student"), dense("teacher")
        self.student_head.build((None, sizes["student"]))
        self.teacher_head.build((None, sizes["teacher"]))
        if self.memory_size:
            # Updated in each replica's step; the first replica's queue is the one kept.
            state = dict(initializer="zeros", trainable=False, aggregation="only_first_replica")
            shape = (self.memory_size, self.embedding_dim)
            self.memory_teacher = self.add_weight(shape=shape, name="memory_teacher", **state)
            self.memory_student = self.add_weight(shape=shape, name="memory_student", **state)
            self.memory_valid = self.add_weight(shape=(self.memory_size,), name="memory_valid",
                                                **state)
            self.memory_pointer = self.add_weight(shape=(), dtype="int32",
                                                  name="memory_pointer", **state)
        super().build_term(teacher, student)

    def _push(self, e_t, e_s, w):
        """Writes the newest min(B, memory_size) embeddings of both sides at the queue's head."""
        size = self.memory_size
        b = tf.shape(e_t)[0]
        k = tf.minimum(b, size)
        index = ((self.memory_pointer + tf.range(k)) % size)[:, None]
        new_t, new_s = tf.stop_gradient(e_t[b - k:]), tf.stop_gradient(e_s[b - k:])
        finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(new_t), axis=-1),
                                tf.reduce_all(tf.math.is_finite(new_s), axis=-1))
        keep = tf.logical_and(w[b - k:] > 0, finite)
        for memory, new in ((self.memory_teacher, new_t), (self.memory_student, new_s)):
            memory.assign(tf.tensor_scatter_nd_update(
                memory, index, tf.where(keep[:, None], new, 0.0)))
        self.memory_valid.assign(tf.tensor_scatter_nd_update(
            self.memory_valid, index, tf.cast(keep, "float32")))
        self.memory_pointer.assign((self.memory_pointer + k) % size)

    def _nce(self, anchor, positives, memory, drop):
        """-log softmax of each anchor's own positive among positives (+ memory) columns."""
        logits = ops.matmul(anchor, ops.transpose(positives))
        if memory is not None:
            logits = ops.concatenate([logits, ops.matmul(anchor, ops.transpose(memory))], axis=1)
        log_p = ops.log_softmax(logits / self.temperature + drop, axis=-1)
        return -ops.diagonal(log_p[:, :ops.shape(anchor)[0]])

    def compute(self, teacher, student, y_true=None, sample_weight=None):
        if self.student_head is None:
            raise ValueError("CRD: call `build_term` first (the Distiller does): it creates the "
                             "embedding heads for the tapped features' sizes.")
        f_t = _flat(_feature(teacher, self.teacher_layer, "teacher", "CRD"))
        f_s = _flat(_feature(student, self.student_layer, "student", "CRD"))
        e_t = _l2_normalise(self.teacher_head(f_t))
        e_s = _l2_normalise(self.student_head(f_s))
        batch = ops.shape(e_t)[0]
        w = (ops.ones((batch,), "float32") if sample_weight is None
             else ops.reshape(ops.cast(sample_weight, "float32"), (-1,)))
        # Samples of weight 0 are no one's negative.
        drop = ops.where(w > 0, 0.0, _NEG)[None, :]
        memory_t = memory_s = None
        if self.memory_teacher is not None:
            # Read before this call's push; empty slots leave the softmax.
            memory_t = tf.identity(self.memory_teacher)
            memory_s = tf.identity(self.memory_student)
            drop = ops.concatenate([drop, ops.where(self.memory_valid > 0, 0.0, _NEG)[None, :]],
                                   axis=1)
        per_sample = 0.5 * (self._nce(e_s, e_t, memory_t, drop)
                            + self._nce(e_t, e_s, memory_s, drop))
        # A weight-0 row is dropped by `where`, not by multiplying: its loss may be anything.
        value = ops.sum(ops.where(w > 0, w * per_sample, 0.0)) / ops.maximum(ops.sum(w), _EPS)
        if self.memory_teacher is not None and getattr(self, "training_step", True):
            self._push(e_t, e_s, w)
        return value

    def get_config(self):
        config = super().get_config()
        config.update(student_layer=self.student_layer, teacher_layer=self.teacher_layer,
                      embedding_dim=float(self.embedding_dim), temperature=self.temperature,
                      memory_size=float(self.memory_size))
        return config
