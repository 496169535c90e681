"""``python -m simclr_tf.neighbours``: what the encoder learned, as pictures.

What: a PNG grid with one row per query image of the eval split: the query,
then its ``k`` nearest images of the training split by cosine similarity of
the representations h, each captioned with its class (where known) and the
similarity; a neighbour's caption is green when its class is the query's,
red when not. The grid's content is written beside it as JSON
(``<out>.json``: every tile's split, row, id, label, cosine and pixel box),
so it can be checked. With ``--map=PATH.png``, also a 2-D t-SNE map of the
eval split's h (scikit-learn: ``pip install "simclr_tf[viz]"``), one dot per
image coloured by class, with its coordinates in ``PATH.csv``.
Why: a user sees at a glance whether the representation groups what should
be grouped, which a top-1 number does not show.

Queries: ``--num_queries`` rows of the eval split spread evenly over it
(row ``round(i * (N - 1) / (num_queries - 1))``), so a split stored class by
class shows several classes. The training split is streamed batch by batch
(its h is never held whole), keeping each query's running top ``k``; equal
similarities rank the lower row first. The model and data flags are
``simclr_tf.embed``'s; the tiles show the images as the model sees them
(evaluation preprocessing at its image size), enlarged by ``--scale``.

Example::

    python -m simclr_tf.neighbours --model_dir=runs/cifar10 --out=neighbours.png \\
        --map=map.png
"""

from simclr_tf import env

env.tune_for_cli()  # before TensorFlow is imported

import argparse  # noqa: E402
import colorsys  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from simclr_tf import embed  # noqa: E402
from simclr_tf.data import augment  # noqa: E402
from simclr_tf.errors import ConfigError, NotSimCLRExportError, RunError  # noqa: E402

VIZ_HINT = ("The map needs scikit-learn: pip install \"simclr_tf[viz]\" (or pip install "
            "scikit-learn), or leave out --map.")
MARGIN, GAP, QUERY_GAP, CAPTION, HEADER = 4, 3, 10, 13, 16
WHITE, BLACK, GRAY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
SAME, OTHER = (0, 120, 0), (200, 0, 0)
# Ten well-separated colours (the "tab10" palette), then evenly spaced hues.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def unit_rows(x):
    """Rows of ``x`` scaled to unit length (all-zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def query_rows(num_examples, num_queries):
    """The eval rows used as queries: ``num_queries`` spread evenly over ``num_examples``."""
    num_queries = min(int(num_queries), int(num_examples))
    if num_queries <= 1:
        return np.zeros(num_queries, np.int64)
    return np.round(np.linspace(0, num_examples - 1, num_queries)).astype(np.int64)


class TopK:
    """Each query's running ``k`` most cosine-similar rows over batches given in row order.

    Args:
        queries: float [q, C], the queries' features.
        k: neighbours kept per query.
    """

    def __init__(self, queries, k):
        self.q = unit_rows(queries)
        self.k = int(k)
        self.sims = np.zeros((len(self.q), 0))
        self.rows = np.zeros((len(self.q), 0), np.int64)
        self.seen = 0

    def add(self, batch):
        sims = self.q @ unit_rows(batch).T
        rows = np.broadcast_to(np.arange(self.seen, self.seen + len(batch)), sims.shape)
        self.seen += len(batch)
        sims = np.concatenate([self.sims, sims], axis=1)
        rows = np.concatenate([self.rows, rows], axis=1)
        # Stable: equal similarities keep the lower row (earlier columns) first.
        order = np.argsort(-sims, axis=1, kind="stable")[:, :self.k]
        self.sims = np.take_along_axis(sims, order, axis=1)
        self.rows = np.take_along_axis(rows, order, axis=1)


def images_at(inp, rows):
    """``{row: uint8 [S, S, 3]}``: rows of ``inp`` as the model sees them (eval preprocessing)."""
    wanted = tf.constant(sorted({int(r) for r in rows}), tf.int64)
    size = inp.data.image_size
    decode = inp.source.decode

    def prepare(i, record):
        image = augment.preprocess_for_eval(decode(record)["image"], size)
        return i, tf.image.convert_image_dtype(image, tf.uint8, saturate=True)

    ds = inp.source.records.enumerate().filter(
        lambda i, r: tf.reduce_any(tf.equal(i, wanted))).map(prepare)
    return {int(i): image for i, image in ds.as_numpy_iterator()}


def _font():
    try:
        return ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1: the bitmap font
        return ImageFont.load_default()


def _fit(draw, text, font, width):
    """``text`` shortened with "..." to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _caption_name(label, class_names, ident):
    name = embed._class_name(label, class_names)
    return name or ("?" if label < 0 and "/" not in ident else os.path.basename(ident))


def draw_grid(tiles, num_rows, k, tile, out_png):
    """Draws the grid; ``tiles``: dicts with ``grid_row``, ``grid_col``, ``image``, ``caption``,
    ``colour``. Fills in each tile's ``box`` ``[x0, y0, x1, y1)``; returns the picture's size."""
    width = 2 * MARGIN + (k + 1) * tile + k * GAP + QUERY_GAP
    height = 2 * MARGIN + HEADER + num_rows * (tile + CAPTION) + (num_rows - 1) * GAP
    picture = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(picture)
    font = _font()
    draw.text((MARGIN, MARGIN), "query", fill=BLACK, font=font)
    draw.text((MARGIN + tile + QUERY_GAP, MARGIN),
              _fit(draw, f"{k} nearest training images (cosine similarity of h)", font,
                   width - tile - QUERY_GAP - 2 * MARGIN), fill=BLACK, font=font)
    for t in tiles:
        x0 = MARGIN + t["grid_col"] * (tile + GAP) + (QUERY_GAP if t["grid_col"] else 0)
        y0 = MARGIN + HEADER + t["grid_row"] * (tile + CAPTION + GAP)
        image = Image.fromarray(t.pop("image")).resize((tile, tile), Image.NEAREST)
        picture.paste(image, (x0, y0))
        draw.text((x0, y0 + tile + 1), _fit(draw, t.pop("caption"), font, tile),
                  fill=t.pop("colour"), font=font)
        t["box"] = [x0, y0, x0 + tile, y0 + tile]
    picture.save(out_png, optimize=True)
    return width, height


def _rows_of(batches, rows, num_examples):
    """(h, labels) of ``rows`` (sorted indices) from streamed (features, labels) batches."""
    wanted = np.zeros(num_examples, bool)
    wanted[rows] = True
    feats, labels, position = [], [], 0
    for f, y in batches:
        keep = wanted[position:position + len(y)]
        position += len(y)
        feats.append(f["h"][keep])
        labels.append(y[keep])
    return np.concatenate(feats), np.concatenate(labels)


def neighbour_grid(model, train, queries, out_png, k=5, num_queries=8, scale=None,
                   log=print):
    """Writes the neighbour grid of ``queries``' eval rows among ``train`` (see the module docstring).

    Args:
        model: an :class:`simclr_tf.embed.Model`.
        train, queries: :class:`simclr_tf.embed.Input` of the training and eval splits.
        out_png: the PNG to write; its content goes to ``out_png`` minus
            ``.png`` plus ``.json``.
        k, num_queries: neighbours per query, query rows.
        scale: tiles enlarged this many times (default ``max(1, 64 // image_size)``).

    Returns:
        The JSON content (dict).
    """
    if k < 1 or num_queries < 1:
        raise ConfigError(f"--k and --num_queries must be at least 1, got {k} and "
                          f"{num_queries}.")
    info, batches = embed.feature_batches(model, queries, what=f"embedding the queries' "
                                                              f"split {queries.split!r}")
    rows = query_rows(info.num_examples, num_queries)
    q_feats, q_labels = _rows_of(batches, rows, info.num_examples)
    train_info, train_batches = embed.feature_batches(
        model, train, what=f"embedding the training split {train.split!r}")
    k = min(int(k), train_info.num_examples)
    top = TopK(q_feats, k)
    t_labels = []
    for feats, labels in train_batches:
        top.add(feats["h"])
        t_labels.append(labels)
    t_labels = np.concatenate(t_labels)
    q_ids, t_ids = embed.row_ids(queries), embed.row_ids(train)
    q_images = images_at(queries, rows)
    t_images = images_at(train, top.rows.ravel())
    size = model.image_size
    tile = size * int(scale or max(1, 64 // size))
    tiles, content = [], []
    for r, (row, label) in enumerate(zip(rows.tolist(), q_labels.tolist())):
        query = {"split": queries.split, "row": row, "id": q_ids[row], "label": label,
                 "class": embed._class_name(label, info.class_names)}
        tiles.append(dict(query, grid_row=r, grid_col=0, image=q_images[row],
                          caption=_caption_name(label, info.class_names, q_ids[row]),
                          colour=BLACK))
        found = []
        for rank in range(k):
            t_row, sim = int(top.rows[r, rank]), float(top.sims[r, rank])
            t_label = int(t_labels[t_row])
            name = _caption_name(t_label, train_info.class_names, t_ids[t_row])
            colour = BLACK if label < 0 or t_label < 0 else (
                SAME if t_label == label else OTHER)
            found.append({"split": train.split, "rank": rank + 1, "row": t_row,
                          "id": t_ids[t_row], "label": t_label,
                          "class": embed._class_name(t_label, train_info.class_names),
                          "cosine": sim})
            tiles.append(dict(found[-1], grid_row=r, grid_col=rank + 1,
                              image=t_images[t_row], caption=f"{sim:.2f} {name}",
                              colour=colour))
        content.append({"query": query, "neighbours": found})
    directory = os.path.dirname(out_png)
    if directory:
        os.makedirs(directory, exist_ok=True)
    width, height = draw_grid(tiles, len(rows), k, tile, out_png)
    boxes = iter(t["box"] for t in tiles)
    for entry in content:
        entry["query"]["box"] = next(boxes)
        for n in entry["neighbours"]:
            n["box"] = next(boxes)
    same = [n["label"] == e["query"]["label"] for e in content for n in e["neighbours"]
            if e["query"]["label"] >= 0 and n["label"] >= 0]
    result = {"model": model.description, "image_size": size, "tile": tile, "k": k,
              "train": f"{train.info.name} {train.split!r}",
              "queries_from": f"{queries.info.name} {queries.split!r}",
              "size": [width, height],
              "same_class_fraction": (sum(same) / len(same)) if same else None,
              "rows": content}
    json_path = os.path.splitext(out_png)[0] + ".json"
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    note = (f"; {100 * result['same_class_fraction']:.0f}% of the neighbours share the "
            "query's class" if same else "")
    log(f"wrote {out_png} ({len(rows)} queries x {k} neighbours, {width}x{height} px) and "
        f"{json_path}{note}")
    return result


def _colour(label):
    if label < 0:
        return GRAY
    if label < len(PALETTE):
        return PALETTE[label]
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.75, 0.85)
    return int(255 * r), int(255 * g), int(255 * b)


def embedding_map(model, inp, out_png, max_points=2000, seed=0, log=print):
    """Writes a t-SNE map of ``inp``'s h (at most ``max_points``, drawn at random) as a PNG.

    Coordinates go to ``out_png`` minus ``.png`` plus ``.csv``
    (``row,id,label,class,x,y``). Needs scikit-learn (the ``viz`` extra).
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise RunError(VIZ_HINT) from None
    info, batches = embed.feature_batches(model, inp, what=f"embedding {inp.split!r} for "
                                                          "the map")
    n = info.num_examples
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(n, int(max_points)), replace=False))
    feats, labels = _rows_of(batches, chosen, n)
    if len(feats) < 5:
        raise ConfigError(f"The map needs at least 5 images; {inp.split!r} has {len(feats)}.")
    xy = TSNE(n_components=2, metric="cosine", init="pca", random_state=seed,
              perplexity=min(30.0, (len(feats) - 1) / 3.0)).fit_transform(
                  unit_rows(feats))
    ids = embed.row_ids(inp)
    side, legend_w, dot = 560, 110, 3
    picture = Image.new("RGB", (side + legend_w, side), WHITE)
    draw = ImageDraw.Draw(picture)
    font = _font()
    low, high = xy.min(axis=0), xy.max(axis=0)
    pos = MARGIN + 8 + (xy - low) / np.maximum(high - low, 1e-12) * (side - 2 * MARGIN - 16)
    for (x, y), label in zip(pos, labels.tolist()):
        draw.ellipse([x - dot, side - y - dot, x + dot, side - y + dot], fill=_colour(label))
    present = sorted(set(labels.tolist()))
    for i, label in enumerate(present):
        y0 = MARGIN + 8 + i * 14
        draw.ellipse([side + 4, y0 + 2, side + 12, y0 + 10], fill=_colour(label))
        name = embed._class_name(label, info.class_names) or (
            "unlabelled" if label < 0 else str(label))
        draw.text((side + 16, y0), _fit(draw, name, font, legend_w - 20), fill=BLACK,
                  font=font)
    draw.text((MARGIN, side - 14), f"t-SNE of h, {len(feats)} images of {inp.split!r}",
              fill=GRAY, font=font)
    directory = os.path.dirname(out_png)
    if directory:
        os.makedirs(directory, exist_ok=True)
    picture.save(out_png, optimize=True)
    csv_path = os.path.splitext(out_png)[0] + ".csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "id", "label", "class", "x", "y"])
        for row, label, (x, y) in zip(chosen.tolist(), labels.tolist(), xy.tolist()):
            w.writerow([row, ids[row], label, embed._class_name(label, info.class_names),
                        f"{x:.4f}", f"{y:.4f}"])
    log(f"wrote {out_png} (t-SNE of {len(feats)} images) and {csv_path}")
    return xy, chosen


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m simclr_tf.neighbours",
        description="Writes a PNG grid of eval images and their nearest training images "
                    "by cosine similarity of h, and optionally a t-SNE map.")
    embed.add_model_arguments(parser)
    parser.add_argument("--train_split", help="Where neighbours are searched (default: the "
                        "run's train_split).")
    parser.add_argument("--eval_split", help="Where the queries come from (default: the "
                        "run's eval_split).")
    parser.add_argument("--num_queries", type=int, default=8, help="Query images (rows).")
    parser.add_argument("--k", type=int, default=5, help="Neighbours per query.")
    parser.add_argument("--scale", type=int, help="Tile enlargement (default: 64 // "
                        "image_size, at least 1).")
    parser.add_argument("--out", default="neighbours.png", help="The grid's PNG (its "
                        "content goes to the same name with .json).")
    parser.add_argument("--map", help="Also write a t-SNE map of the eval split's h to this "
                        "PNG (needs the viz extra: scikit-learn).")
    parser.add_argument("--map_points", type=int, default=2000, help="Images drawn at "
                        "random for the map.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the map's sample and "
                        "of t-SNE.")
    return parser.parse_args(argv)


def main(argv=None):
    """``python -m simclr_tf.neighbours``; ``argv`` without the program name."""
    program = "simclr_tf.neighbours"
    args = parse(argv)
    try:
        if args.map:  # before the long extraction
            try:
                import sklearn.manifold  # noqa: F401
            except ImportError:
                raise RunError(VIZ_HINT) from None
        model = embed.load_model(args.model_dir, args.weights)
        cfg = model.cfg
        if cfg is None and not (args.train_split and args.eval_split):
            raise ConfigError("Pass --train_split and --eval_split (with --dataset): this "
                              "model has no config.yaml to take the run's from.")
        opened = {}
        for name, split in (("train", args.train_split or cfg.train_split),
                            ("eval", args.eval_split or cfg.eval_split)):
            opened[name] = embed.open_input(model, dataset=args.dataset,
                                            data_dir=args.data_dir, split=split,
                                            batch_size=args.batch_size)
        neighbour_grid(model, opened["train"], opened["eval"], args.out, k=args.k,
                       num_queries=args.num_queries, scale=args.scale)
        if args.map:
            embedding_map(model, opened["eval"], args.map, args.map_points, args.seed)
    except (ConfigError, RunError, NotSimCLRExportError, FileNotFoundError, ValueError) as e:
        embed.fail(program, str(e))


if __name__ == "__main__":
    embed.setup_logging()
    main()
