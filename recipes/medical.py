"""Medical recipe: imbalanced binary classification (PneumoniaMNIST, BreastMNIST).

    python -m recipes.medical --data=../shared/data/pneumoniamnist.npz --output_dir=runs/pneumonia
    python -m recipes.medical --data=../shared/data/breastmnist.npz --epochs=20

Class imbalance is handled with class weights (`--class_weights`, on by default): every
sample is weighted by N / (K * n_class) in the task loss and the knowledge terms. AUC and
balanced accuracy are reported beside accuracy (AUC is the headline of the plot). With no
`--teacher`, a wider zoo network is trained first on the same data.
"""
import numpy as np
from absl import app
from absl import flags

from recipes import config
from recipes import flow
from recipes.console import say
from recipes.task import ClassificationTask

config.define_flags(
    data=str(config.SHARED / "data" / "pneumoniamnist.npz"),
    image_size=28,
    teacher_arch="resnet_tiny", teacher_width=2.0, teacher_epochs=8,
    student="mobile_cnn", student_width=0.5,
    knowledge="soft_targets", temperature=2.0,
    epochs=8, batch_size=64,
    output_dir="runs/medical",
)
flags.DEFINE_bool("class_weights", True, "Weight samples by N / (K * n_class) (imbalance).")


def class_weights(y, num_classes):
    """N / (K * n_c) per class; a class absent from `y` gets weight 0."""
    counts = np.bincount(np.asarray(y).reshape(-1), minlength=num_classes).astype("float64")
    weights = np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype("float32")


def roc_auc(y_true, score):
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y_true = np.asarray(y_true).reshape(-1).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = np.asarray(score)[order]
    ranks = np.empty(len(score))
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2.0
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def medical_scores(y_true, logits):
    y_true = np.asarray(y_true).reshape(-1)
    logits = np.asarray(logits, "float64")
    pred = np.argmax(logits, -1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    classes = range(logits.shape[-1])
    recalls = [np.mean(pred[y_true == c] == c) for c in classes if np.any(y_true == c)]
    if logits.shape[-1] == 2:
        auc = roc_auc(y_true == 1, probs[:, 1])
    else:  # macro one-vs-rest
        auc = float(np.nanmean([roc_auc(y_true == c, probs[:, c]) for c in classes]))
    return {"auc": auc, "balanced_accuracy": float(np.mean(recalls)),
            "accuracy": float(np.mean(pred == y_true))}


class MedicalTask(ClassificationTask):
    """Imbalanced classification: class weights (optional), AUC as the headline."""

    name = "medical"
    headline = "auc"
    default_image_size = 28

    def __init__(self, use_class_weights=True):
        self.use_class_weights = bool(use_class_weights)
        self.weights = None

    def prepare(self, splits):
        if self.use_class_weights:
            self.weights = class_weights(splits.train[1], splits.num_classes)
            say("Class weights: %s", dict(zip(splits.class_names,
                                              self.weights.round(3).tolist())))

    def sample_weights(self, y):
        return None if self.weights is None else self.weights[np.asarray(y).reshape(-1)]

    def scores(self, y_true, outputs):
        return medical_scores(y_true, outputs)


def main(argv):
    del argv
    flow.main(lambda: MedicalTask(flags.FLAGS.class_weights))


if __name__ == "__main__":
    app.run(main)
