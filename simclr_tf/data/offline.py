"""``offline_shapes``: the built-in dataset that needs no download.

SimCLR's reference datasets (CIFAR-10, ImageNet) have to be fetched before the
first run. ``offline_shapes`` is generated inside the package with NumPy from a
fixed seed, so smoke tests, notebooks and air-gapped machines can pretrain and
evaluate end to end, and every machine sees the same pixels.

What it contains
----------------
32x32 RGB ``uint8`` images, each covered by copies of one shape tiled on a
square grid; the shape is the label (``CLASS_NAMES``, 10 classes)::

    0 circle        1 square       2 triangle      3 cross        4 ring
    5 star          6 bar          7 frame         8 half_disk    9 l_shape

Every nuisance factor is random and independent of the label: the shape's
colour, the grid's period (8-12 px) and phase, and the shapes' size within
their tile; the background (a random colour gradient plus faint per-pixel
noise) and clutter (zero to two small blobs in random colours). The shape's
colour is kept away from the background colour so that every image is
solvable. Shapes are upright.

Tiling makes the class survive SimCLR's random crops (any crop of a few
tiles still shows the shape) while colour and position carry no class
information, so what separates the classes is a representation invariant to
colour, position, scale and clutter: the invariances SimCLR's views teach.

Measured (frozen features h of ResNet-18 at width 0.25, standardised, then
logistic regression as in ``simclr_tf.linear_eval``; 2,000 test images):
15.2% top-1 for the randomly initialised encoder, 35.8% after the default
four-epoch pretraining (27.5% with seed 1; BENCHMARKS.md). History, for whoever changes this
generator: one shape per image (v0) was cropped away by SimCLR's views (12.9%
after two epochs); tiled shapes under random rotation and dense clutter (v1)
gave 13.0% at random init and 18.2% after the demo. Rotation is not among
SimCLR's augmentations, so nothing taught the invariance; without it, and with
less clutter (v2, this version), the same run reaches 22%, and the demo's
tuned learning rate and temperature (configs/default.yaml) the figure above.

Splits
------
``"train"``: 10,000 images (seed 0); ``"test"``: 2,000 images (seed 1). Labels
are exactly balanced and shuffled. Generation is deterministic (NumPy's PCG64
generator), vectorised, and takes a few seconds for the train split on a
2-core CPU; results are memoised per process.

Example:
    >>> from simclr_tf.data import offline
    >>> images, labels = offline.generate("test")
    >>> images.shape, images.dtype, labels[:5]
    ((2000, 32, 32, 3), dtype('uint8'), array([...]))
"""

import functools

import numpy as np

NAME = "offline_shapes"
IMAGE_SIZE = 32
CLASS_NAMES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "bar",
    "frame",
    "half_disk",
    "l_shape",
)
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = {"train": (10_000, 0), "test": (2_000, 1)}  # split -> (num_examples, seed)

_SUPERSAMPLE = 2  # shapes are rendered at 2x and box-filtered (anti-aliasing)
_CHUNK = 1000  # images rendered per vectorised chunk (bounds peak memory)
_MAX_BLOBS = 2  # clutter blobs per image: 0.._MAX_BLOBS


def num_examples(split):
    """Returns the number of images in ``split`` ("train" or "test")."""
    return SPLITS[_check_split(split)][0]


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(
            f"offline_shapes has splits {sorted(SPLITS)}, not {split!r}. "
            "Use split='train' or split='test' (TFDS-style slices such as "
            "'train[:10%]' also work through simclr_tf.data.datasets.load).")
    return split


def _class_mask(cls, u, v):
    """Boolean mask of shape class ``cls`` in local coordinates ``u``, ``v``.

    ``u``, ``v`` are pixel coordinates rotated and scaled so that the shape's
    outer radius is 1 (``v`` points up).
    """
    au, av = np.abs(u), np.abs(v)
    if cls == 0:  # circle
        return u * u + v * v <= 0.81
    if cls == 1:  # square
        return np.maximum(au, av) <= 0.72
    if cls == 2:  # equilateral triangle pointing up, circumradius 1
        # Inside when the projection on each vertex direction is >= -0.5.
        tri = np.full(u.shape, np.inf, dtype=u.dtype)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            tri = np.minimum(tri, u * np.cos(angle) + v * np.sin(angle))
        return tri >= -0.5
    if cls == 3:  # cross
        return ((au <= 0.28) & (av <= 1.0)) | ((av <= 0.28) & (au <= 1.0))
    if cls == 4:  # ring
        r2 = u * u + v * v
        return (r2 <= 0.95 ** 2) & (r2 >= 0.55 ** 2)
    if cls == 5:  # five-pointed star
        r = np.hypot(u, v)
        theta = np.arctan2(v, u)
        return r <= 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 1.5
    if cls == 6:  # bar
        return (au <= 1.0) & (av <= 0.32)
    if cls == 7:  # frame (hollow square)
        box = np.maximum(au, av)
        return (box <= 0.8) & (box >= 0.45)
    if cls == 8:  # half disk
        return (u * u + v * v <= 0.95 ** 2) & (v >= -0.1)
    if cls == 9:  # L shape
        return (((u >= -0.75) & (u <= -0.2) & (av <= 0.85))
                | ((v >= 0.3) & (v <= 0.85) & (u >= -0.75) & (u <= 0.75)))
    raise ValueError(f"unknown class {cls}")


def _shape_masks(labels, u, v):
    """Boolean masks [N, P, P] of each image's shape (see ``_class_mask``)."""
    masks = np.zeros(u.shape, dtype=bool)
    for cls in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == cls)
        if idx.size:
            masks[idx] = _class_mask(cls, u[idx], v[idx])
    return masks


def _render_chunk(rng, labels):
    """Renders images for ``labels`` with draws from ``rng``."""
    n = labels.shape[0]
    size = IMAGE_SIZE
    p = size * _SUPERSAMPLE
    f32 = np.float32

    # Background: base colour + linear gradient + per-pixel colour noise.
    base = rng.uniform(0.0, 1.0, (n, 1, 1, 3)).astype(f32)
    grad_dir = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1)).astype(f32)
    grad_amp = rng.uniform(0.0, 0.35, (n, 1, 1, 3)).astype(f32)
    ys, xs = np.meshgrid(np.linspace(-1, 1, size, dtype=f32),
                         np.linspace(-1, 1, size, dtype=f32), indexing="ij")
    ramp = (np.cos(grad_dir) * xs[None, :, :, None]
            + np.sin(grad_dir) * ys[None, :, :, None])
    background = rng.standard_normal((n, size, size, 3), dtype=f32)
    background *= 0.02
    background += base + grad_amp * ramp

    # Clutter: 0-2 small discs/squares (radius 1-2.5 px) in random colours;
    # later blobs cover earlier ones (the tiled shape is drawn over them).
    yy = np.arange(size, dtype=f32)[None, :, None] + 0.5
    xx = np.arange(size, dtype=f32)[None, None, :] + 0.5
    num_blobs = rng.integers(0, _MAX_BLOBS + 1, n)
    blob_id = np.zeros((n, size, size), dtype=np.int8)  # 0 = no blob
    blob_colours = rng.uniform(0, 1, (n, _MAX_BLOBS + 1, 3)).astype(f32)
    for b in range(1, _MAX_BLOBS + 1):
        cy, cx = rng.uniform(0, size, (2, n, 1, 1)).astype(f32)
        rad = rng.uniform(1.0, 2.5, (n, 1, 1)).astype(f32)
        square = rng.uniform(size=(n, 1, 1)) < 0.5
        dy, dx = np.abs(yy - cy), np.abs(xx - cx)  # [n, S, 1], [n, 1, S]
        inside = np.where(square, np.maximum(dy, dx) <= rad, dy * dy + dx * dx <= rad * rad)
        inside &= (b <= num_blobs)[:, None, None]
        blob_id[inside] = b
    flat = blob_colours[np.arange(n)[:, None], blob_id.reshape(n, -1)].reshape(n, size, size, 3)
    background = np.where((blob_id > 0)[..., None], flat, background)

    # Shape colour: uniform, but at least 0.45 (L2, RGB in [0, 1]) away from
    # the background's base colour; otherwise pushed to the opposite colour.
    colour = rng.uniform(0, 1, (n, 1, 1, 3)).astype(f32)
    far = np.linalg.norm(colour - base, axis=-1, keepdims=True) >= 0.45
    colour = np.where(far, colour, 1.0 - base + rng.uniform(-0.15, 0.15, base.shape).astype(f32))
    colour = np.clip(colour, 0.0, 1.0)

    # Shape geometry: the class's shape tiled on a square grid with a random
    # period (8-12 px) and phase, upright, each copy filling 70-90% of its
    # tile. Any crop of a few tiles still shows the class, while colour and
    # position say nothing about it. No rotation: SimCLR's views do not teach
    # rotation invariance, and random rotations slowed learning (module doc).
    period = rng.uniform(8.0, 12.0, (n, 1, 1)).astype(f32)
    radius = period * rng.uniform(0.35, 0.45, (n, 1, 1)).astype(f32)
    oy, ox = (rng.uniform(0, 1, (2, n, 1, 1)).astype(f32) * period)
    sub = (np.arange(p, dtype=f32) + 0.5) / _SUPERSAMPLE
    dy = np.mod(sub[None, :, None] - oy, period) - period / 2  # [n, P, 1]
    dx = np.mod(sub[None, None, :] - ox, period) - period / 2  # [n, 1, P]
    # Scale so that the shape's outer radius is 1; v points up (rows grow down).
    u, v = np.broadcast_arrays(dx / radius, -dy / radius)  # [n, P, P] each
    mask = _shape_masks(labels, u, v).view(np.uint8)
    hits = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(_SUPERSAMPLE):
        for j in range(_SUPERSAMPLE):
            hits += mask[:, i::_SUPERSAMPLE, j::_SUPERSAMPLE]
    coverage = hits.astype(f32)[..., None] * (1.0 / _SUPERSAMPLE ** 2)

    image = background + coverage * (colour - background)
    image *= 255.0
    image += 0.5
    return np.clip(image, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _generate_cached(split):
    n, seed = SPLITS[split]
    rng = np.random.default_rng(np.random.PCG64(seed))
    labels = np.arange(n, dtype=np.int64) % NUM_CLASSES
    labels = rng.permutation(labels)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        images[start:stop] = _render_chunk(rng, labels[start:stop])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def generate(split="train"):
    """Generates (or returns the memoised) ``split`` of ``offline_shapes``.

    Args:
        split: ``"train"`` (10,000 images) or ``"test"`` (2,000 images).

    Returns:
        ``(images, labels)``: read-only NumPy arrays, ``uint8 [N, 32, 32, 3]``
        and ``int64 [N]`` with values in ``[0, 10)``, exactly balanced.

    Raises:
        ValueError: for an unknown split.
    """
    return _generate_cached(_check_split(split))
