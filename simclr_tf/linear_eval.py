"""Linear evaluation on frozen features: logistic regression on h.

The SimCLR paper measures transfer with "an l2-regularized multinomial
logistic regression classifier on features extracted from the frozen
pretrained network" (Chen et al. 2020, arXiv:2002.05709, appendix B.8). This
module does the same for any encoder: it extracts h for every image of a split
with evaluation preprocessing (no augmentation, BN in inference mode),
standardises the features with the training split's statistics, fits the
classifier full-batch from zero weights with Adam for a fixed number of steps
(deterministic; the paper used L-BFGS) and reports top-1/top-5 on the eval
split.

It complements the linear probe trained during pretraining (which sees
augmented views of a moving encoder): this one reads a fixed encoder, so it
also scores a randomly initialised encoder, the baseline that pretraining must
beat.
"""

import numpy as np
import tensorflow as tf

from simclr_tf.data import pipeline
from simclr_tf.progress import Progress


def extract_features(encoder, dataset, progress=None):
    """Runs ``encoder(images, training=False)`` over ``(images, labels)``
    batches; returns (features float32 [N, C], labels int32 [N]).

    ``progress``: an optional :class:`simclr_tf.progress.Progress` counting images.
    """

    @tf.function
    def features(images):
        return tf.cast(encoder(images, training=False), tf.float32)

    feats, labels = [], []
    for images, batch_labels in dataset:
        feats.append(features(images).numpy())
        labels.append(batch_labels.numpy())
        if progress is not None:
            progress.update(len(labels[-1]))
    if progress is not None:
        progress.done()
    return np.concatenate(feats), np.concatenate(labels).astype(np.int32)


def fit_logistic_regression(features, labels, num_classes, l2=1e-4, steps=300,
                            learning_rate=0.05):
    """Fits multinomial logistic regression; returns a predict-logits function.

    Features are standardised with their own mean and std (kept for
    prediction). The objective is mean cross-entropy + ``l2 * ||W||^2 / 2``,
    minimised full-batch with Adam for ``steps`` steps from zero weights, so
    the result is deterministic.
    """
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    x = tf.constant((features - mean) / std, tf.float32)
    y = tf.constant(labels, tf.int32)
    w = tf.Variable(tf.zeros([x.shape[1], num_classes]))
    b = tf.Variable(tf.zeros([num_classes]))
    opt = tf.keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, w) + b
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=logits)) + l2 * tf.reduce_sum(tf.square(w)) / 2
        opt.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
        return loss

    for _ in range(steps):
        step()
    w_np, b_np = w.numpy(), b.numpy()

    def predict(new_features):
        return ((new_features - mean) / std) @ w_np + b_np

    return predict


def topk_accuracy(logits, labels, k):
    """Fraction of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def split_features(encoder, cfg, split, indices=None):
    """Frozen features h and labels of a split's labelled examples (eval preprocessing).

    ``cfg``: a ``DataConfig`` (``cfg.data``); ``indices``: keep only these
    examples (e.g. a label subset's) before dropping unlabelled ones.
    """
    ds, info = pipeline.build_eval_dataset(cfg.dataset, split, cfg.eval_batch_size,
                                           cfg.image_size, data_dir=cfg.data_dir)
    feats, labels = extract_features(
        encoder, ds, Progress(f"frozen features of {split!r}", info.num_examples))
    if indices is not None:
        feats, labels = feats[indices], labels[indices]
    keep = labels >= 0
    return feats[keep], labels[keep]


def frozen_features(encoder, cfg, train_indices=None):
    """``(train_x, train_y, eval_x, eval_y)`` of ``cfg``'s splits, or a clear ValueError."""
    train_x, train_y = split_features(encoder, cfg, cfg.train_split, train_indices)
    eval_x, eval_y = split_features(encoder, cfg, cfg.eval_split)
    if len(train_x) == 0 or len(eval_x) == 0:
        raise ValueError(
            f"Linear evaluation needs labels in both {cfg.train_split!r} and "
            f"{cfg.eval_split!r} of {cfg.dataset!r}; one of them has none. "
            "Turn it off with --feature_linear_eval=false.")
    return train_x, train_y, eval_x, eval_y


def fit_and_score(features, num_classes):
    """The paper's protocol on ``frozen_features``: ``{"top1", "top5", "num_train", "num_eval"}``."""
    train_x, train_y, eval_x, eval_y = features
    logits = fit_logistic_regression(train_x, train_y, num_classes)(eval_x)
    return {"top1": topk_accuracy(logits, eval_y, 1),
            "top5": topk_accuracy(logits, eval_y, 5),
            "num_train": int(len(train_x)), "num_eval": int(len(eval_x))}


def evaluate(encoder, cfg, num_classes, train_indices=None):
    """Linear evaluation of ``encoder`` on the dataset of ``cfg`` (a ``DataConfig``, ``cfg.data``).

    Returns ``{"top1", "top5", "num_train", "num_eval"}``: a classifier fitted
    on frozen features of ``cfg.train_split`` (unlabelled examples dropped;
    only the examples at ``train_indices``, e.g. a
    :class:`simclr_tf.data.subsets.LabelSubset`'s, when given), scored on
    ``cfg.eval_split``.
    """
    return fit_and_score(frozen_features(encoder, cfg, train_indices), num_classes)
