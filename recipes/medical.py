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

from recipes import common

common.define_flags(
    data=str(common.SHARED / "data" / "pneumoniamnist.npz"),
    image_size=28,
    teacher_arch="resnet_tiny", teacher_width=2.0, teacher_epochs=8,
    student="mobile_cnn", student_width=0.5,
    knowledge=("soft_targets",), temperature=2.0,
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


def medical_task(weights=None):
    import keras

    return common.Task(
        name="medical",
        loss=lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        compile_metrics=lambda: ["accuracy"],
        scores=medical_scores,
        headline="auc",
        sample_weights=None if weights is None else (lambda y: weights[np.asarray(y)]),
    )


def run(config, use_class_weights=True):
    splits = common.load_data(config, default_image_size=28)
    weights = class_weights(splits.train[1], splits.num_classes) if use_class_weights else None
    if weights is not None:
        common.say("Class weights: %s", dict(zip(splits.class_names, weights.round(3).tolist())))
    return common.run(config, medical_task(weights), splits=splits)


def main(argv):
    del argv
    common.quiet_tf()
    config = common.from_flags()
    metrics = run(config, flags.FLAGS.class_weights)
    print(common.summary_line(metrics, config.output_dir))


if __name__ == "__main__":
    app.run(main)
