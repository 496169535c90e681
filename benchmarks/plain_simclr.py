"""Plain SimCLR, written from the paper (Chen et al. 2020), as a second path.

Issue #19: a reviewer's "plain SimCLR of about 90 lines" reached a higher
frozen-feature linear-eval top-1 than simclr_tf at the same budget. This
script is our own such reference. It deliberately shares no code with
simclr_tf (nothing is imported from it) so that the two can disagree.

Recipe: two views per image (RandomResizedCrop scale (0.08, 1) torchvision
style, flip, colour jitter 0.4/0.4/0.4/0.1 with p=0.8 in the fixed order
brightness, contrast, saturation, hue, grayscale p=0.2, no blur); CIFAR
ResNet-18 (3x3 stem, no max-pool) x --width; head Dense-BN-ReLU-Dense(128);
NT-Xent over the 2N views; SGD momentum 0.9, lr = --lr * batch / 256 with
one epoch of linear warmup then cosine decay to 0 (per step), weight decay
as the loss term wd/2 * ||w||^2 on conv/dense kernels (the gradient gets
wd * w). Evaluation on frozen h of the un-augmented images: multinomial
logistic regression on standardised h (L-BFGS in NumPy, l2 from
1e-5..1 picked on a held-out 10% of train, refit on all) and weighted kNN
(k=200, T=0.1, cosine). wall_seconds counts the whole script.

  python benchmarks/plain_simclr.py --data_dir=/work/data/cifar10_dev --epochs=10
"""
import argparse, json, math, os, pathlib, time
import numpy as np
from PIL import Image
import tensorflow as tf
import keras

SIZE = 32


def load_split(folder, classes=None):
    classes = classes or sorted(p.name for p in pathlib.Path(folder).iterdir() if p.is_dir())
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((pathlib.Path(folder) / name).glob("*.jpg")):
            img = Image.open(f).convert("RGB")
            xs.append(np.asarray(img if img.size == (SIZE, SIZE) else img.resize((SIZE, SIZE), Image.BILINEAR)))
            ys.append(label)
    return np.stack(xs).astype(np.uint8), np.array(ys, np.int64), classes


def random_resized_crop(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """torchvision RandomResizedCrop: first of 10 valid tries, else a centre crop."""
    hw = tf.cast(tf.shape(img)[:2], tf.float32)
    area = tf.random.uniform([attempts], *scale) * hw[0] * hw[1]
    aspect = tf.exp(tf.random.uniform([attempts], math.log(ratio[0]), math.log(ratio[1])))
    w, h = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
    ok = (w > 0) & (w <= hw[1]) & (h > 0) & (h <= hw[0])
    first = tf.argmax(tf.cast(ok, tf.int32))
    in_ratio = hw[1] / hw[0]  # fallback: the largest centred crop within the ratio range
    fw = tf.where(in_ratio > ratio[1], tf.round(hw[0] * ratio[1]), hw[1])
    fh = tf.where(in_ratio < ratio[0], tf.round(hw[1] / ratio[0]), hw[0])
    h, w = tf.where(ok[first], h[first], fh), tf.where(ok[first], w[first], fw)
    top = tf.where(ok[first], tf.floor(tf.random.uniform([]) * (hw[0] - h + 1)), tf.floor((hw[0] - h) / 2))
    left = tf.where(ok[first], tf.floor(tf.random.uniform([]) * (hw[1] - w + 1)), tf.floor((hw[1] - w) / 2))
    box = tf.cast(tf.stack([top, left, h, w]), tf.int32)
    crop = tf.image.crop_to_bounding_box(img, box[0], box[1], box[2], box[3])
    return tf.image.resize(crop, [SIZE, SIZE], method="bilinear")


def gray(x):
    return tf.reduce_sum(x * [0.299, 0.587, 0.114], -1, keepdims=True)


def color_jitter(x, b=0.4, c=0.4, s=0.4, h=0.1):
    factor = lambda k: tf.random.uniform([], 1 - k, 1 + k)
    x = tf.clip_by_value(x * factor(b), 0, 1)
    mean = tf.reduce_mean(gray(x))
    x = tf.clip_by_value((x - mean) * factor(c) + mean, 0, 1)
    g = gray(x)
    x = tf.clip_by_value((x - g) * factor(s) + g, 0, 1)
    return tf.clip_by_value(tf.image.adjust_hue(x, tf.random.uniform([], -h, h)), 0, 1)


def augment(img):
    x = random_resized_crop(tf.cast(img, tf.float32) / 255.0)
    x = tf.image.random_flip_left_right(x)
    x = tf.cond(tf.random.uniform([]) < 0.8, lambda: color_jitter(x), lambda: x)
    x = tf.cond(tf.random.uniform([]) < 0.2, lambda: tf.tile(gray(x), [1, 1, 3]), lambda: x)
    return tf.clip_by_value(x, 0, 1)


def resnet18(width):
    def conv_bn(x, ch, k, stride, relu=True):
        x = keras.layers.Conv2D(ch, k, stride, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        return keras.layers.ReLU()(x) if relu else x

    inp = keras.Input((SIZE, SIZE, 3))
    x = conv_bn(inp, int(64 * width), 3, 1)
    for stage, ch in enumerate([int(c * width) for c in (64, 128, 256, 512)]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(conv_bn(x, ch, 3, stride), ch, 3, 1, relu=False)
            if stride != 1 or x.shape[-1] != ch:
                x = conv_bn(x, ch, 1, stride, relu=False)
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


def nt_xent(z1, z2, temperature):
    """Mean over the 2N anchors of cross-entropy against the other view (self excluded)."""
    z = tf.math.l2_normalize(tf.concat([z1, z2], 0), axis=1)
    n = tf.shape(z1)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature - 1e9 * tf.eye(2 * n)
    labels = tf.concat([tf.range(n, 2 * n), tf.range(n)], 0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak, warmup, total):
        self.peak, self.warmup, self.total = peak, float(warmup), float(total)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        cos = 0.5 * (1 + tf.cos(math.pi * (step - self.warmup) / max(self.total - self.warmup, 1.0)))
        return self.peak * tf.where(step < self.warmup, (step + 1) / self.warmup, cos)


def logistic_regression(xtr, ytr, xte, l2, iters=300, memory=10):
    """Multinomial logistic regression + l2/2 ||W||^2 (bias not penalised) on standardised features, L-BFGS."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    add1 = lambda x: np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    a, b, onehot = add1(xtr), add1(xte), np.eye(ytr.max() + 1)[ytr]
    reg = np.ones((a.shape[1], 1)); reg[-1] = 0

    def loss_grad(w):
        w = w.reshape(a.shape[1], -1)
        logits = a @ w
        m = logits.max(1, keepdims=True)
        p = np.exp(logits - m); z = p.sum(1, keepdims=True); p /= z
        loss = np.mean(m[:, 0] + np.log(z[:, 0]) - (logits * onehot).sum(1)) + 0.5 * l2 * np.sum(reg * w ** 2)
        return loss, (a.T @ (p - onehot) / len(a) + l2 * reg * w).ravel()

    w = np.zeros(a.shape[1] * onehot.shape[1])
    loss, g = loss_grad(w)
    pairs = []
    for _ in range(iters):
        q, alphas = g.copy(), []
        for s, y in reversed(pairs):  # two-loop recursion
            alphas.append(s @ q / (y @ s)); q -= alphas[-1] * y
        q *= (pairs[-1][0] @ pairs[-1][1]) / (pairs[-1][1] @ pairs[-1][1]) if pairs else 1 / np.linalg.norm(g)
        for (s, y), alpha in zip(pairs, reversed(alphas)):
            q += s * (alpha - y @ q / (y @ s))
        step = 1.0
        while True:  # backtracking (Armijo) line search
            new_loss, new_g = loss_grad(w - step * q)
            if new_loss <= loss - 1e-4 * step * (g @ q) or step < 1e-8:
                break
            step /= 2
        s, y = -step * q, new_g - g
        if s @ y > 1e-12:
            pairs = (pairs + [(s, y)])[-memory:]
        w, loss, g = w + s, new_loss, new_g
        if np.linalg.norm(g) < 1e-5:
            break
    return (b @ w.reshape(a.shape[1], -1)).argmax(1)


def knn_predict(ftr, ytr, fte, k=200, t=0.1, classes=10):
    ftr, fte = tf.math.l2_normalize(ftr, 1), tf.math.l2_normalize(fte, 1)
    sims, idx = tf.math.top_k(tf.matmul(fte, ftr, transpose_b=True), min(k, len(ytr)))
    votes = tf.one_hot(tf.gather(ytr, idx), classes) * tf.exp(sims / t)[..., None]
    return tf.argmax(tf.reduce_sum(votes, 1), 1).numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--limit", type=int, default=0, help="use a random subset of this many train images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    start = time.time()
    keras.utils.set_random_seed(args.seed)
    xtr, ytr, classes = load_split(os.path.join(args.data_dir, "train"))
    xte, yte, _ = load_split(os.path.join(args.data_dir, "test"), classes)
    if args.limit:
        keep = np.random.RandomState(args.seed).permutation(len(xtr))[: args.limit]
        xtr, ytr = xtr[keep], ytr[keep]
    steps = len(xtr) // args.batch
    ds = (tf.data.Dataset.from_tensor_slices(xtr).shuffle(len(xtr), seed=args.seed)
          .map(lambda x: (augment(x), augment(x)), num_parallel_calls=tf.data.AUTOTUNE)
          .batch(args.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    encoder = resnet18(args.width)
    dim = encoder.output.shape[-1]
    head = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(dim, use_bias=False),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Dense(128)])
    kernels = [v for v in encoder.trainable_variables + head.trainable_variables if v.name == "kernel"]
    opt = keras.optimizers.SGD(WarmupCosine(args.lr * args.batch / 256, steps, steps * args.epochs), momentum=0.9)

    @tf.function
    def train_step(x1, x2):
        with tf.GradientTape() as tape:
            z = head(encoder(tf.concat([x1, x2], 0), training=True), training=True)
            loss = nt_xent(z[: args.batch], z[args.batch:], args.temperature)
            total = loss + args.wd * tf.add_n([tf.nn.l2_loss(v) for v in kernels])
        variables = encoder.trainable_variables + head.trainable_variables
        opt.apply_gradients(zip(tape.gradient(total, variables), variables))
        return loss

    for epoch in range(args.epochs):
        t0, losses = time.time(), [float(train_step(x1, x2)) for x1, x2 in ds]
        print(f"epoch {epoch + 1}/{args.epochs}  loss {np.mean(losses):.4f}  {time.time() - t0:.1f}s", flush=True)

    embed = tf.function(lambda x: encoder(tf.cast(x, tf.float32) / 255.0, training=False))
    features = lambda x: np.concatenate([embed(x[i:i + 500]).numpy() for i in range(0, len(x), 500)])
    ftr, fte = features(xtr), features(xte)
    order = np.random.RandomState(args.seed + 1).permutation(len(ftr))
    held, fit = order[: len(ftr) // 10], order[len(ftr) // 10:]
    grid = {l2: np.mean(logistic_regression(ftr[fit], ytr[fit], ftr[held], l2) == ytr[held])
            for l2 in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)}
    best = max(grid, key=grid.get)
    print("held-out top-1 by l2:", {k: round(float(v), 4) for k, v in grid.items()}, "-> l2", best)
    result = {"feature_linear_eval_top1": float(np.mean(logistic_regression(ftr, ytr, fte, best) == yte)),
              "knn_top1": float(np.mean(knn_predict(ftr, ytr, fte, classes=len(classes)) == yte)),
              "epochs": args.epochs, "wall_seconds": round(time.time() - start, 1)}
    print(json.dumps(result))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
