"""Each scheme's loss against its paper's equation, in float64 NumPy.

The schemes lost to their baselines in the first benchmark (Adam, 5k images, 8 epochs); the
issue asked whether the budget or the implementation hid their gains. These tests settle the
implementation side: one batch through `evaluate` (inference mode, one step, so each metric is
that batch's value) against the equation computed from the models' own logits.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

import tfkd
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
N = 16


def softmax(z, t=1.0):
    z = np.asarray(z, np.float64) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def cross_entropy(y, z):
    """Per sample -log softmax(z)[y]."""
    return -np.log(softmax(z)[np.arange(len(y)), y])


def kl(p, q):
    """Per sample KL(p || q)."""
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def soft_targets(z_t, z_s, t):
    """Hinton KD: T^2 KL(softmax(z_t / T) || softmax(z_s / T)), per sample."""
    return t * t * kl(softmax(z_t, t), softmax(z_s, t))


def logits(model, x):
    return np.asarray(model.predict(x, verbose=0), np.float64)


def one_batch(trainer, x, y):
    return trainer.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)


@pytest.fixture(scope="module")
def batch(mnist_small):
    (x, y), _ = mnist_small
    return x[:N], y[:N].astype("int64")


def test_mutual_learning_is_dml(batch):
    """DML (Zhang et al. 2018, Eq. 10-11): L_k = CE(y, p_k) + KL(p_j || p_k), peers fixed;
    with a temperature the KL is T^2-scaled (Hinton), reported per student and summed."""
    x, y = batch
    a, b = convnet(4, name="a", seed=1), convnet(4, name="b", seed=2)
    ml = tfkd.schemes.MutualLearning([a, b], temperature=3.0, kd_weight=0.7)
    ml.compile("sgd", CE)
    logs = one_batch(ml, x, y)
    za, zb = logits(a, x), logits(b, x)
    kd_a, kd_b = soft_targets(zb, za, 3.0).mean(), soft_targets(za, zb, 3.0).mean()
    np.testing.assert_allclose(logs["a_loss"], cross_entropy(y, za).mean(), rtol=1e-4)
    np.testing.assert_allclose(logs["a_kd_loss"], kd_a, rtol=1e-4)
    np.testing.assert_allclose(logs["b_kd_loss"], kd_b, rtol=1e-4)
    total = cross_entropy(y, za).mean() + cross_entropy(y, zb).mean() + 0.7 * (kd_a + kd_b)
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-4)


def test_self_distillation_is_byot(batch):
    """BYOT (Zhang et al. 2019, Eq. 1-3) without the hint: the deepest classifier learns from
    the labels; each shallow head i from (1 - alpha) CE(y, q_i) + alpha T^2 KL(q_C || q_i),
    alpha = 0.3, T = 3, with the deepest output q_C fixed."""
    x, y = batch
    student = convnet(4, name="student", seed=3)
    sd = tfkd.schemes.SelfDistillation(student, ["block1"], temperature=3.0)
    sd.compile("sgd", CE)
    logs = one_batch(sd, x, y)
    z, z1 = logits(student, x), logits(sd.early_exit("block1"), x)
    head = 0.7 * cross_entropy(y, z1).mean() + 0.3 * soft_targets(z, z1, 3.0).mean()
    np.testing.assert_allclose(logs["student_loss"], cross_entropy(y, z).mean(), rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], cross_entropy(y, z).mean() + head, rtol=1e-4)


def test_multi_teacher_confidence_weighting(batch):
    """Confidence-aware multi-teacher KD (Zhang et al. 2022): per sample, the teachers'
    soft-target losses weighted by softmax_k(-CE(y, z_k)), plus the task loss."""
    x, y = batch
    t1, t2 = convnet(8, name="t1", seed=4), convnet(8, name="t2", seed=5)
    s = convnet(4, name="s", seed=6)
    mt = tfkd.schemes.MultiTeacher(s, [t1, t2], weighting="confidence", temperature=2.0)
    mt.compile("sgd", CE)
    logs = one_batch(mt, x, y)
    zs, zt = logits(s, x), [logits(t, x) for t in (t1, t2)]
    w = softmax(np.stack([-cross_entropy(y, z) for z in zt], axis=-1))
    kd = sum(w[:, k] * soft_targets(z, zs, 2.0) for k, z in enumerate(zt)).mean()
    np.testing.assert_allclose(logs["soft_targets_loss"], kd, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], cross_entropy(y, zs).mean() + kd, rtol=1e-4)


def test_adversarial_distillation_losses(batch):
    """Xu et al. 2018: D tells teacher logits (1) from student logits (0); the student adds
    the non-saturating -log sigmoid(D(z_s)) to its KD and task losses."""
    x, y = batch
    teacher, student = convnet(8, name="teacher", seed=7), convnet(4, name="student", seed=8)
    adv = tfkd.schemes.AdversarialDistillation(student, teacher, adversarial_weight=0.3)
    adv.compile("sgd", CE, discriminator_optimizer="sgd")
    logs = one_batch(adv, x, y)
    zs, zt = logits(student, x), logits(teacher, x)
    d = lambda z: np.asarray(adv.discriminator(z.astype("float32")), np.float64)[:, 0]
    softplus = lambda v: np.logaddexp(0.0, v)
    np.testing.assert_allclose(logs["adversarial_loss"], softplus(-d(zs)).mean(), rtol=1e-4)
    np.testing.assert_allclose(logs["discriminator_loss"],
                               (softplus(-d(zt)) + softplus(d(zs))).mean(), rtol=1e-4)
    np.testing.assert_allclose(logs["soft_targets_loss"], soft_targets(zt, zs, 4.0).mean(),
                               rtol=1e-4)
