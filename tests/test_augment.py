"""Tests for simclr_tf.data.augment (SimCLR augmentations, arXiv:2002.05709 app. A).

Rates are measured from outputs over a few thousand seeded draws run through
``tf.data`` (graph mode, parallel map); tolerances are 4 binomial standard
deviations. References are written here in NumPy from the formulas.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.data import augment

AUTOTUNE = tf.data.AUTOTUNE


def _draw(fn, n, salt=12345):
    """Runs ``fn(seed)`` for ``n`` seeds [i, salt] in a parallel tf.data map and
    returns the results stacked along a new first axis as NumPy arrays."""
    ds = tf.data.Dataset.range(n).map(
        lambda i: fn(tf.stack([i, tf.constant(salt, tf.int64)])),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    batch = next(iter(ds.batch(n)))
    return tf.nest.map_structure(lambda t: t.numpy(), batch)


def _within_binomial(count, n, p, sigmas=4.0):
    return abs(count / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def _colour_image(h=4, w=4, seed=0):
    """Image whose pixels have three clearly different channels, away from 0/1."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.7, size=(h, w, 3)).astype(np.float32)
    base[..., 0] += 0.1
    base[..., 2] -= 0.1
    return base


# ---------------------------------------------------------------------------
# Independent NumPy references: bicubic resize and the colour-space formulas
# ---------------------------------------------------------------------------


def _keys_cubic(t, a=-0.5):
    """Keys' cubic convolution kernel (a = -0.5), as TensorFlow's bicubic."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((t - 5) * t + 8) * t * a - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _bicubic_matrix(n_in, n_out):
    """[n_out, n_in] bicubic resampling matrix: half-pixel centres, the 4 taps
    around each source position, taps outside the image dropped and the rest
    renormalised, the fractional offset rounded to 1/1024 (TensorFlow reads
    the kernel from a 1024-entry table)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = int(np.floor(src))
        frac = np.round((src - base) * 1024) / 1024
        for k in range(base - 1, base + 3):
            if 0 <= k < n_in:
                m[i, k] = _keys_cubic(frac - (k - base))
        m[i] /= m[i].sum()
    return m


def _np_resize(image, size):
    """Bicubic resize of a float [H, W, 3] image to [size, size, 3], clipped to [0, 1]."""
    out = np.einsum("ij,jwc->iwc", _bicubic_matrix(image.shape[0], size), image)
    out = np.einsum("vw,hwc->hvc", _bicubic_matrix(image.shape[1], size), out)
    return np.clip(out, 0.0, 1.0)


def _np_eval(image, size):
    """Evaluation preprocessing written out: above 32 px a centred square of
    round(0.875 * shorter side), offset (n - side + 1) // 2; then bicubic."""
    image = image.astype(np.float64)
    if size > 32:
        h, w = image.shape[:2]
        side = max(1, int(np.round(0.875 * min(h, w))))
        oy, ox = (h - side + 1) // 2, (w - side + 1) // 2
        image = image[oy:oy + side, ox:ox + side]
    return _np_resize(image, size)


def _np_contrast(image, factor):
    """(x - mean) * f + mean, the mean per channel over the image's pixels."""
    mean = image.mean(axis=(0, 1), keepdims=True)
    return (image - mean) * factor + mean


def _np_rgb_to_hsv(image):
    """RGB in [0, 1] -> HSV, hue in [0, 1) (the hexcone formulas)."""
    r, g, b = (image[..., i] for i in range(3))
    v = image.max(axis=-1)
    c = v - image.min(axis=-1)
    s = np.where(v > 0, c / np.where(v > 0, v, 1), 0.0)
    safe = np.where(c > 0, c, 1.0)
    h = np.where(v == r, ((g - b) / safe) % 6,
                 np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = np.where(c > 0, h / 6.0, 0.0)
    return np.stack([h, s, v], axis=-1)


def _np_hsv_to_rgb(hsv):
    h, s, v = (hsv[..., i] for i in range(3))
    h6 = (h % 1.0) * 6.0
    c = v * s
    x = c * (1 - np.abs(h6 % 2 - 1))
    m = v - c
    sector = np.floor(h6).astype(int) % 6
    zero = np.zeros_like(c)
    table = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c),
             (c, zero, x)]
    rgb = np.zeros(h.shape + (3,))
    for k, (r, g, b) in enumerate(table):
        sel = sector == k
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
    return rgb + m[..., None]


def _np_saturation(image, factor):
    hsv = _np_rgb_to_hsv(image)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
    return _np_hsv_to_rgb(hsv)


def _np_hue(image, delta):
    hsv = _np_rgb_to_hsv(image)
    hsv[..., 0] = (hsv[..., 0] + delta) % 1.0
    return _np_hsv_to_rgb(hsv)


def _np_brightness_v2(image, factor):
    return image * factor


def _drawn(seed, lo, hi):
    """The float U[lo, hi) a stateless op draws from ``seed``."""
    return float(tf.random.stateless_uniform((), seed=seed, minval=lo, maxval=hi))


def _sub_seeds(seed, n):
    """The ``n`` sub-seeds an op derives from its seed (stateless split)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n)
    return [seeds[i] for i in range(n)]


# ---------------------------------------------------------------------------
# Presets, shapes, ranges
# ---------------------------------------------------------------------------


def test_preset():
    assert augment.preset(32) == {"color_jitter_strength": 0.5, "use_blur": False}
    assert augment.preset(24) == {"color_jitter_strength": 0.5, "use_blur": False}
    assert augment.preset(33) == {"color_jitter_strength": 1.0, "use_blur": True}
    assert augment.preset(224) == {"color_jitter_strength": 1.0, "use_blur": True}


def test_numpy_bicubic_reference_is_tensorflow_resize():
    """The reference above is itself checked once, against tf.image.resize, on
    up- and downsampling; the tests below then compare the module with it."""
    rng = np.random.default_rng(16)
    for h, w, size in [(20, 37, 32), (96, 64, 40), (123, 77, 56)]:
        x = rng.uniform(0, 1, size=(h, w, 3))
        got = tf.image.resize(x.astype(np.float32), [size, size], method="bicubic").numpy()
        np.testing.assert_allclose(np.clip(got, 0, 1), _np_resize(x, size), atol=2e-6)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_train_and_eval_views_are_crops_of_the_image_eager(dtype):
    """Eval: the NumPy centre crop + bicubic resize. Train (crop and flip only):
    the bicubic resize of the box sample_crop_box draws from the crop sub-seed,
    mirrored or not, and both happen; the full train view is float32 in [0, 1]."""
    rng = np.random.default_rng(1)
    mirrored = []
    for h, w in [(20, 37), (32, 32), (96, 64)]:
        x = rng.uniform(0, 1, size=(h, w, 3))
        x = (x * 255).astype(np.uint8) if dtype == "uint8" else x.astype(np.float32)
        xf = x / 255.0 if dtype == "uint8" else x.astype(np.float64)
        for size in (32, 40):
            e = augment.preprocess_for_eval(x, size)
            assert e.dtype == tf.float32 and e.shape == (size, size, 3)
            np.testing.assert_allclose(e.numpy(), _np_eval(xf, size), atol=2e-6)
            for k in range(4):
                seed = tf.constant([k, size], tf.int64)
                y = augment.preprocess_for_train(x, seed, size, crop=True, flip=True,
                                                 color_distort=False, use_blur=False).numpy()
                crop_seed = _sub_seeds(seed, 4)[0]
                oy, ox, ch, cw = (int(v) for v in augment.sample_crop_box(
                    h, w, crop_seed, relative_aspect=True))
                ref = _np_resize(xf[oy:oy + ch, ox:ox + cw], size)
                plain = np.abs(y - ref).max() < 2e-6
                flipped = np.abs(y - ref[:, ::-1]).max() < 2e-6
                assert plain or flipped, (h, w, size, k, np.abs(y - ref).max())
                mirrored.append(flipped and not plain)
                full = augment.preprocess_for_train(x, seed, size, **augment.preset(size))
                assert full.dtype == tf.float32 and full.shape == (size, size, 3)
                assert 0.0 <= float(tf.reduce_min(full)) and float(tf.reduce_max(full)) <= 1.0
    assert 0 < sum(mirrored) < len(mirrored)


@pytest.mark.parametrize("dtype", [tf.uint8, tf.float32])
def test_train_and_eval_in_tf_data_with_dynamic_shapes(dtype):
    """Images of unknown shape in a parallel tf.data map give the eager views of the
    same seeds (a second path) and the NumPy evaluation reference."""
    rng = np.random.default_rng(2)
    sizes = [(20, 37), (32, 32), (96, 64), (7, 120)]
    images = []
    for h, w in sizes:
        x = rng.uniform(0, 1, size=(h, w, 3))
        images.append((x * 255).astype(np.uint8) if dtype == tf.uint8 else x.astype(np.float32))

    ds = tf.data.Dataset.from_generator(lambda: iter(images),
                                        output_signature=tf.TensorSpec([None, None, 3], dtype))

    def two_views_and_eval(i, x):
        s1 = tf.stack([i, tf.constant(0, tf.int64)])
        s2 = tf.stack([i, tf.constant(1, tf.int64)])
        v1 = augment.preprocess_for_train(x, s1, 48, color_jitter_impl="v1")
        v2 = augment.preprocess_for_train(x, s2, 48)
        return {"view1": v1, "view2": v2}, augment.preprocess_for_eval(x, 48)

    out = ds.enumerate().map(two_views_and_eval, num_parallel_calls=AUTOTUNE)
    assert {name: spec.shape for name, spec in out.element_spec[0].items()} == {
        "view1": (48, 48, 3), "view2": (48, 48, 3)}
    assert out.element_spec[1].shape == (48, 48, 3)
    n = 0
    for i, (views, ev) in enumerate(out):
        x = images[i]
        xf = x / 255.0 if dtype == tf.uint8 else x.astype(np.float64)
        np.testing.assert_allclose(ev.numpy(), _np_eval(xf, 48), atol=2e-6)
        eager1 = augment.preprocess_for_train(x, tf.constant([i, 0], tf.int64), 48,
                                              color_jitter_impl="v1")
        eager2 = augment.preprocess_for_train(x, tf.constant([i, 1], tf.int64), 48)
        np.testing.assert_allclose(views["view1"].numpy(), eager1.numpy(), atol=1e-5)
        np.testing.assert_allclose(views["view2"].numpy(), eager2.numpy(), atol=1e-5)
        assert views["view1"].dtype == tf.float32
        assert np.abs(views["view1"].numpy() - views["view2"].numpy()).max() > 1e-3
        n += 1
    assert n == len(sizes)


def test_uint8_and_float_inputs_agree():
    x8 = np.random.default_rng(3).integers(0, 256, size=(30, 41, 3), dtype=np.uint8)
    xf = x8.astype(np.float32) / 255.0
    seed = tf.constant([5, 6])
    a = augment.preprocess_for_train(x8, seed, 40)
    b = augment.preprocess_for_train(xf, seed, 40)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_invalid_color_jitter_impl():
    with pytest.raises(ValueError):
        augment.preprocess_for_train(np.zeros((8, 8, 3), np.float32), [1, 2], 8, color_jitter_impl="v3")


# ---------------------------------------------------------------------------
# Random resized crop
# ---------------------------------------------------------------------------


def test_crop_box_sampler_bounds_and_distribution():
    h, w, n = 600, 900, 4000
    oy, ox, ch, cw = _draw(lambda s: augment.sample_crop_box(h, w, s), n)
    assert (ch >= 1).all() and (cw >= 1).all()
    assert (oy >= 0).all() and (ox >= 0).all()
    assert (oy + ch <= h).all() and (ox + cw <= w).all()
    # Sides are rounded to integers: allow the rounding error (<= 0.5 px each).
    area = ch * cw / (h * w)
    rel = 0.5 / np.minimum(ch, cw)
    assert (area >= 0.08 * (1 - 2 * rel) - 1e-9).all() and (area <= 1.0).all()
    ratio = cw / ch
    assert (ratio >= 0.75 * (1 - 2 * rel)).all() and (ratio <= 4 / 3 * (1 + 2 * rel)).all()
    # The full range is used.
    assert area.min() < 0.1 and area.max() > 0.85  # max possible: 600 * 800 / (600 * 900)
    assert ratio.min() < 0.77 and ratio.max() > 1.3
    # Log-uniform aspect: on a square image the accepted log(ratio) stays
    # symmetric about 0, so P[r > 1] = 1/2 (a uniform ratio in [3/4, 4/3]
    # would give about 4/7 = 0.571).
    _, _, sq_h, sq_w = _draw(lambda s: augment.sample_crop_box(800, 800, s), n, salt=7)
    above = np.sum(sq_w > sq_h)
    below = np.sum(sq_w < sq_h)
    assert _within_binomial(above, above + below, 0.5)
    # Uniform random position over the free range.
    free_y, free_x = h - ch, w - cw
    sel = (free_y > 0) & (free_x > 0)
    uy = oy[sel] / free_y[sel]
    ux = ox[sel] / free_x[sel]
    for u in (uy, ux):
        assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / len(u))
    # Different images of the batch get different boxes.
    assert len({(a, b, c, d) for a, b, c, d in zip(oy, ox, ch, cw)}) > 0.95 * n


@pytest.mark.parametrize(
    "h,w,expected",
    [
        (10, 1000, (0, (1000 - 13) // 2, 10, 13)),  # too wide: width = round(10 * 4/3)
        (1000, 10, ((1000 - 13) // 2, 0, 13, 10)),  # too tall: height = round(10 / (3/4))
    ],
)
def test_crop_box_fallback_is_centre_crop(h, w, expected):
    # No box with area >= 8% and aspect in [3/4, 4/3] fits: always the fallback.
    boxes = _draw(lambda s: augment.sample_crop_box(h, w, s), 50)
    for i in range(50):
        assert tuple(int(b[i]) for b in boxes) == expected


def test_crop_box_fallback_whole_image_when_aspect_in_range():
    # area_range above 1 can never fit: the fallback is the whole image.
    box = augment.sample_crop_box(30, 35, tf.constant([1, 2]), area_range=(1.5, 2.0))
    assert tuple(int(b) for b in box) == (0, 0, 30, 35)


def test_crop_aspect_ratio_is_relative_to_the_image():
    """The paper (appendix A) and the official code sample the box's width/height
    in [3/4, 4/3] times the image's own ratio; square images are unchanged."""
    h, w = 100, 200  # ratio 2: boxes between 1.5 and 2.67 (before rounding)
    ratios = []
    for i in range(300):
        oy, ox, ch, cw = (int(v) for v in augment.sample_crop_box(
            h, w, tf.constant([i, 3]), relative_aspect=True))
        assert 0 <= oy and oy + ch <= h and 0 <= ox and ox + cw <= w
        if ch >= 20:  # rounding distorts the ratio of tiny boxes
            ratios.append(cw / ch)
    ratios = np.array(ratios)
    assert len(ratios) > 100
    assert ratios.min() >= 1.5 * 0.95 and ratios.max() <= 2 * 4 / 3 * 1.05, ratios
    assert ratios.min() < 1.7 and ratios.max() > 2.4  # the whole range is used
    absolute = [int(v) for v in augment.sample_crop_box(h, w, tf.constant([5, 3]))]
    assert absolute[3] / absolute[2] <= 4 / 3 * 1.05  # the old, absolute range
    for i in range(20):  # square images: bit-identical boxes either way
        seed = tf.constant([i, 9])
        a = [int(v) for v in augment.sample_crop_box(64, 64, seed, relative_aspect=True)]
        b = [int(v) for v in augment.sample_crop_box(64, 64, seed)]
        assert a == b


def test_random_resized_crop_uses_sampled_box():
    h, w, size = 90, 120, 40
    for seed in ([1, 7], [2, 7], [3, 7]):
        seed = tf.constant(seed)
        oy, ox, ch, cw = (int(v) for v in augment.sample_crop_box(
            h, w, seed, relative_aspect=True))
        # Inside the box 0.75, outside 0.25: the output must be all 0.75.
        x = np.full((h, w, 3), 0.25, np.float32)
        x[oy : oy + ch, ox : ox + cw] = 0.75
        y = augment.random_resized_crop(x, seed, size).numpy()
        np.testing.assert_allclose(y, 0.75, atol=1e-5)
        # Linear ramps (rows in channel 0, columns in channel 1): cubic
        # convolution reproduces linear functions, so away from the borders the
        # output is the ramp sampled at the half-pixel-centre source positions.
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        x = np.stack([rows / h, cols / w, np.full((h, w), 0.5)], axis=-1).astype(np.float32)
        y = augment.random_resized_crop(x, seed, size).numpy()
        src_y = (np.arange(size) + 0.5) * ch / size - 0.5
        src_x = (np.arange(size) + 0.5) * cw / size - 0.5
        iy = (np.floor(src_y) >= 1) & (np.floor(src_y) + 2 <= ch - 1)
        ix = (np.floor(src_x) >= 1) & (np.floor(src_x) + 2 <= cw - 1)
        assert iy.sum() > size // 2 and ix.sum() > size // 2
        np.testing.assert_allclose(y[iy, 0, 0], (oy + src_y[iy]) / h, atol=1e-4)
        np.testing.assert_allclose(y[0, ix, 1], (ox + src_x[ix]) / w, atol=1e-4)
        np.testing.assert_allclose(y[..., 2], 0.5, atol=1e-5)


# ---------------------------------------------------------------------------
# Flip
# ---------------------------------------------------------------------------


def test_flip_rate_and_values():
    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) / 18.0
    n = 4000
    y = _draw(lambda s: augment.random_flip(x, s), n)
    same = np.all(y == x, axis=(1, 2, 3))
    mirrored = np.all(y == x[:, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    assert _within_binomial(mirrored.sum(), n, 0.5)


def test_flip_inside_preprocess_for_train():
    x = np.random.default_rng(4).uniform(0, 1, size=(8, 8, 3)).astype(np.float32)
    n = 1000
    y = _draw(
        lambda s: augment.preprocess_for_train(
            x, s, 8, crop=False, color_distort=False, use_blur=False
        ),
        n,
    )
    same = np.all(np.abs(y - x) < 1e-6, axis=(1, 2, 3))
    mirrored = np.all(np.abs(y - x[:, ::-1]) < 1e-6, axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    assert _within_binomial(mirrored.sum(), n, 0.5)


# ---------------------------------------------------------------------------
# Colour distortion
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl,strength", [("v2", 1.0), ("v1", 0.5)])
def test_color_distortion_rates(impl, strength):
    x = _colour_image()
    gray_x = augment.to_grayscale(x).numpy()
    n = 4000
    y = _draw(lambda s: augment.random_color_distortion(x, s, strength, impl), n)
    assert y.min() >= 0.0 and y.max() <= 1.0
    is_gray = np.all(np.abs(y - y[..., :1]) < 1e-6, axis=(1, 2, 3))
    untouched = np.where(
        is_gray,
        np.all(np.abs(y - gray_x) < 1e-6, axis=(1, 2, 3)),
        np.all(np.abs(y - x) < 1e-6, axis=(1, 2, 3)),
    )
    jittered = ~untouched
    assert _within_binomial(is_gray.sum(), n, 0.2)
    assert _within_binomial(jittered.sum(), n, 0.8)
    # Grayscale is decided independently of the jitter.
    assert _within_binomial(np.sum(is_gray & jittered), n, 0.16)


def test_jitter_order_is_a_uniform_permutation():
    n = 2400
    orders = _draw(lambda s: augment._jitter_order(s), n)
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    counts = {}
    for o in orders:
        counts[tuple(o)] = counts.get(tuple(o), 0) + 1
    assert len(counts) == 24
    expected = n / 24
    tol = 4 * math.sqrt(expected * (1 - 1 / 24))
    assert all(abs(c - expected) <= tol for c in counts.values())


def test_contrast_matches_the_channel_mean_formula():
    """(x - mean) * f + mean with the per-channel mean over the pixels, f drawn
    from U[max(0, 1 - c), 1 + c]."""
    x = _colour_image(6, 5, seed=17).astype(np.float64)
    _check_strength_op(augment._contrast, _np_contrast, x, salt=31)


def _check_strength_op(op, reference, x, salt):
    """``op(x, seed, 0.8)`` equals ``reference(x, f)`` for eight seeds, f drawn from
    U[0.2, 1.8] by the seed; factors below and above 1 are both met."""
    factors = []
    for k in range(8):
        seed = tf.constant([k, salt], tf.int64)
        f = _drawn(seed, 0.2, 1.8)
        factors.append(f)
        got = op(tf.constant(x, tf.float32), seed, 0.8).numpy()
        np.testing.assert_allclose(got, reference(x, f), atol=2e-6)
    assert min(factors) < 0.9 and max(factors) > 1.1  # both directions are tested


def test_saturation_matches_the_hsv_formula():
    """RGB -> HSV, S * f clipped to [0, 1], -> RGB, f from U[max(0, 1 - c), 1 + c]."""
    x = _colour_image(6, 5, seed=18).astype(np.float64)
    # The reference round-trips: HSV -> RGB inverts RGB -> HSV.
    np.testing.assert_allclose(_np_hsv_to_rgb(_np_rgb_to_hsv(x)), x, atol=1e-12)
    _check_strength_op(augment._saturation, _np_saturation, x, salt=32)
    # A factor of 0 leaves no colour: every channel becomes the value V = max.
    np.testing.assert_allclose(_np_saturation(x, 0.0), np.repeat(x.max(-1, keepdims=True), 3, -1))


def test_hue_matches_the_hsv_formula():
    """RGB -> HSV, H + d modulo 1, -> RGB, d from U[-h, h] with h = min(strength, 0.5)."""
    x = _colour_image(6, 5, seed=19).astype(np.float64)
    deltas = []
    for k in range(8):
        seed = tf.constant([k, 33], tf.int64)
        d = _drawn(seed, -0.4, 0.4)
        deltas.append(d)
        got = augment._hue(tf.constant(x, tf.float32), seed, 0.4).numpy()
        np.testing.assert_allclose(got, _np_hue(x, d), atol=2e-6)
    assert min(deltas) < -0.05 and max(deltas) > 0.05  # both signs
    # A strength above 0.5 draws from [-0.5, 0.5].
    seed = tf.constant([3, 34], tf.int64)
    got = augment._hue(tf.constant(x, tf.float32), seed, 0.9).numpy()
    np.testing.assert_allclose(got, _np_hue(x, _drawn(seed, -0.5, 0.5)), atol=2e-6)
    # A third of a turn maps (r, g, b) to (b, r, g).
    np.testing.assert_allclose(_np_hue(x, 1 / 3), x[..., [2, 0, 1]], atol=1e-12)


def test_color_jitter_applies_ops_in_the_drawn_order():
    """The reference is built from the NumPy formulas above, the seeds split as
    the docstrings say: five sub-seeds (order, brightness, contrast,
    saturation, hue), the order the argsort of four uniforms."""
    x = _colour_image(6, 5, seed=9).astype(np.float64)
    s = 1.0
    b = c = sat = 0.8 * s
    h = 0.2 * s
    differs_from_fixed = 0
    orders = set()
    for k in range(8):
        seed = tf.constant([k, 99], tf.int64)
        order_seed, b_seed, c_seed, s_seed, h_seed = _sub_seeds(seed, 5)
        order = np.argsort(tf.random.stateless_uniform([4], seed=order_seed).numpy())
        orders.add(tuple(order))
        ops = [
            lambda im: _np_brightness_v2(im, _drawn(b_seed, 1 - b, 1 + b)),
            lambda im: _np_contrast(im, _drawn(c_seed, 1 - c, 1 + c)),
            lambda im: _np_saturation(im, _drawn(s_seed, 1 - sat, 1 + sat)),
            lambda im: _np_hue(im, _drawn(h_seed, -h, h)),
        ]
        ref = x
        for idx in order:
            ref = np.clip(ops[idx](ref), 0.0, 1.0)
        fixed_ref = x
        for op in ops:
            fixed_ref = np.clip(op(fixed_ref), 0.0, 1.0)
        got = augment.color_jitter(tf.constant(x, tf.float32), seed, s, "v2").numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5)
        fixed = augment.color_jitter(tf.constant(x, tf.float32), seed, s, "v2",
                                     random_order=False).numpy()
        np.testing.assert_allclose(fixed, fixed_ref, atol=1e-5)
        differs_from_fixed += int(np.abs(fixed - got).max() > 1e-4)
    assert len(orders) >= 4 and differs_from_fixed >= 3


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_brightness_v2_multiplicative_v1_additive(strength):
    """On constant gray images contrast, saturation and hue are identities, so
    only brightness acts: v2 multiplies by f in [1-0.8s, 1+0.8s], v1 adds d in
    [-0.8s, 0.8s]."""
    b = 0.8 * strength
    c1, c2 = 0.15, 0.25  # v2: c2 * (1 + b) <= 0.45, no clipping
    a1, a2 = 0.45, 0.55  # v1 at s=0.5: a +- 0.4 stays in [0, 1]
    n = 400

    def both(seed, impl, lo, hi):
        img_lo = tf.fill([3, 3, 3], lo)
        img_hi = tf.fill([3, 3, 3], hi)
        return (
            augment.color_jitter(img_lo, seed, strength, impl),
            augment.color_jitter(img_hi, seed, strength, impl),
        )

    lo, hi = _draw(lambda s: both(s, "v2", c1, c2), n)
    for img in (lo, hi):
        assert np.allclose(img, img[:, :1, :1, :1], atol=1e-6)  # still constant gray
    f1 = lo[:, 0, 0, 0] / c1
    f2 = hi[:, 0, 0, 0] / c2
    np.testing.assert_allclose(f1, f2, rtol=1e-5)  # same factor: multiplicative
    assert f1.min() >= 1 - b - 1e-5 and f1.max() <= 1 + b + 1e-5
    assert f1.min() < 1 - 0.95 * b and f1.max() > 1 + 0.95 * b
    assert abs(f1.mean() - 1.0) < 4 * (2 * b / math.sqrt(12 * n))

    if strength == 0.5:
        lo, hi = _draw(lambda s: both(s, "v1", a1, a2), n)
        d1 = lo[:, 0, 0, 0] - a1
        d2 = hi[:, 0, 0, 0] - a2
        np.testing.assert_allclose(d1, d2, atol=1e-5)  # same delta: additive
        assert d1.min() >= -b - 1e-5 and d1.max() <= b + 1e-5
        assert d1.min() < -0.95 * b and d1.max() > 0.95 * b
        # Additive, not multiplicative: the ratios differ between the images.
        assert np.abs(hi[:, 0, 0, 0] / a2 - lo[:, 0, 0, 0] / a1).max() > 0.1


def test_to_grayscale_matches_luma_weights():
    x = _colour_image(3, 5)
    ref = x @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    y = augment.to_grayscale(x).numpy()
    for ch in range(3):
        np.testing.assert_allclose(y[..., ch], ref, atol=1e-3)


# ---------------------------------------------------------------------------
# Gaussian blur
# ---------------------------------------------------------------------------


def _numpy_blur(image, sigma, kernel_size, mode):
    """Separable Gaussian blur written from the formula (float64)."""
    r = kernel_size // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    padded = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)), mode=mode)
    h, w = image.shape[:2]
    vert = sum(k[j] * padded[j : j + h] for j in range(2 * r + 1))
    return sum(k[j] * vert[:, j : j + w] for j in range(2 * r + 1))


@pytest.mark.parametrize("padding,np_mode", [("REFLECT", "reflect"), ("SYMMETRIC", "symmetric")])
def test_gaussian_blur_matches_numpy_reference(padding, np_mode):
    image = np.random.default_rng(5).uniform(0, 1, size=(30, 41, 3)).astype(np.float32)
    for sigma, kernel_size in [(0.7, 5), (1.6, 9), (2.0, None)]:
        got = augment.gaussian_blur(image, sigma, kernel_size, padding=padding)
        k = kernel_size or 2 * max(1, 30 // 20) + 1
        ref = _numpy_blur(image, sigma, k, np_mode)
        assert got.shape == image.shape
        np.testing.assert_allclose(got.numpy(), ref, atol=2e-6)


def test_gaussian_blur_dynamic_shape_in_graph():
    image = np.random.default_rng(6).uniform(0, 1, size=(44, 60, 3)).astype(np.float32)
    fn = tf.function(
        lambda im: augment.gaussian_blur(im, 1.3),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
    )
    ref = _numpy_blur(image, 1.3, 2 * (44 // 20) + 1, "reflect")
    np.testing.assert_allclose(fn(image).numpy(), ref, atol=2e-6)


@pytest.mark.parametrize("side,expected", [(10, 3), (32, 3), (64, 7), (96, 9), (224, 23)])
def test_blur_kernel_size_is_odd_and_about_a_tenth(side, expected):
    assert augment.blur_kernel_size(side) == expected
    # The rule itself, over every side (Python int and tensor), not the table above.
    for n in range(1, 600):
        k = augment.blur_kernel_size(n)
        assert k % 2 == 1 and k >= 3, n
        if n >= 30:
            assert abs(k - 0.1 * n) <= 1.0, n
    sides = tf.range(1, 600)
    np.testing.assert_array_equal(
        augment.blur_kernel_size(sides).numpy(),
        [augment.blur_kernel_size(n) for n in range(1, 600)])
    # Measured from the output: the support of the blurred impulse.
    impulse = np.zeros((side, side, 3), np.float32)
    impulse[side // 2, side // 2] = 1.0
    out = augment.gaussian_blur(impulse, 2.0).numpy()
    assert np.count_nonzero(out[side // 2, :, 0]) == expected
    assert np.count_nonzero(out[:, side // 2, 0]) == expected


def test_random_blur_rate_and_per_image_sigma():
    side, c, n = 16, 8, 2000
    impulse = np.zeros((side, side, 3), np.float32)
    impulse[c, c] = 1.0
    out = _draw(lambda s: augment.random_blur(impulse, s), n)  # one batch of n images
    blurred = np.any(out != impulse, axis=(1, 2, 3))
    assert _within_binomial(blurred.sum(), n, 0.5)
    # Separable normalised kernel w: out[c, c + 1] / out[c, c] = w1 / w0 = exp(-1 / (2 sigma^2)).
    centre = out[blurred, c, c, 0].astype(np.float64)
    right = out[blurred, c, c + 1, 0].astype(np.float64)
    below = out[blurred, c + 1, c, 0].astype(np.float64)
    np.testing.assert_allclose(right, below, rtol=1e-5)
    sigma = np.sqrt(-1.0 / (2.0 * np.log(right / centre)))
    assert sigma.min() >= 0.1 * (1 - 1e-4) and sigma.max() <= 2.0 * (1 + 1e-4)
    assert sigma.min() < 0.15 and sigma.max() > 1.95
    # Drawn per image: the ~1000 images of this one batch have (almost all)
    # distinct sigmas (a per-batch sigma would give one value) ...
    assert len(np.unique(np.round(sigma, 5))) > 0.98 * len(sigma)
    # ... distributed as U[0.1, 2.0] (mean, and Kolmogorov-Smirnov at ~0.1%).
    m = len(sigma)
    assert abs(sigma.mean() - 1.05) < 4 * 1.9 / math.sqrt(12 * m)
    u = np.sort((sigma - 0.1) / 1.9)
    ks = max(np.max(np.arange(1, m + 1) / m - u), np.max(u - np.arange(m) / m))
    assert ks < 1.95 / math.sqrt(m)
    # The total mass is preserved away from the borders.
    np.testing.assert_allclose(out[blurred].sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_blur_sigma_per_image_inside_preprocess_for_train():
    """Two images of one batch, same content, different seeds: blurred with
    different sigmas (the official code shared one sigma per batch)."""
    side, c = 40, 20
    impulse = np.zeros((side, side, 3), np.float32)
    impulse[c, c] = 1.0
    out = _draw(
        lambda s: augment.preprocess_for_train(
            impulse, s, side, crop=False, flip=False, color_distort=False, use_blur=True
        ),
        64,
    )
    blurred = out[:, c, c + 1, 0] > 0
    assert blurred.sum() >= 2
    ratio = out[blurred, c, c + 1, 0] / out[blurred, c, c, 0]
    assert len(np.unique(np.round(ratio, 6))) == blurred.sum()


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------


def test_same_seed_same_output_different_seed_different_output():
    x = np.random.default_rng(7).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    kwargs = dict(image_size=48, color_jitter_strength=1.0, use_blur=True)
    seeds = tf.constant([[11, 3], [11, 3], [12, 3], [11, 4]], tf.int64)
    eager = [augment.preprocess_for_train(x, s, **kwargs).numpy() for s in seeds]
    np.testing.assert_array_equal(eager[0], eager[1])
    assert np.abs(eager[0] - eager[2]).max() > 1e-3
    assert np.abs(eager[0] - eager[3]).max() > 1e-3

    def run():
        ds = tf.data.Dataset.from_tensor_slices(seeds).map(
            lambda s: augment.preprocess_for_train(x, s, **kwargs), num_parallel_calls=AUTOTUNE
        )
        return np.stack([y.numpy() for y in ds])

    first, second = run(), run()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[0], first[1])
    np.testing.assert_allclose(first, np.stack(eager), atol=1e-5)


# ---------------------------------------------------------------------------
# Evaluation preprocessing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h,w,size",
    [
        (64, 80, 56),  # side = round(0.875 * 64) = 56: the resize is the identity
        (90, 72, 63),  # side = round(0.875 * 72) = 63
    ],
)
def test_eval_centre_crop_matches_numpy(h, w, size):
    x8 = np.random.default_rng(8).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    side = int(round(0.875 * min(h, w)))
    assert side == size
    oy, ox = (h - side + 1) // 2, (w - side + 1) // 2
    ref = x8[oy : oy + side, ox : ox + side].astype(np.float32) / 255.0
    got = augment.preprocess_for_eval(x8, size).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # crop=False: no crop, plain resize of the whole image.
    if h == w:
        np.testing.assert_allclose(augment.preprocess_for_eval(x8, h, crop=False), x8 / 255.0, atol=1e-6)


def test_eval_no_crop_at_32_px():
    x = np.random.default_rng(9).uniform(0, 1, size=(32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(augment.preprocess_for_eval(x, 32).numpy(), x, atol=1e-6)
    # A 3-px bright stripe on the left of a 40x40 image: a 0.875 centre crop
    # (side 35, offset 3) removes it, no crop keeps it.
    stripe = np.zeros((40, 40, 3), np.float32)
    stripe[:, :3] = 1.0
    kept = augment.preprocess_for_eval(stripe, 32).numpy()
    assert kept[:, 0].min() > 0.5
    cropped = augment.preprocess_for_eval(stripe, 33).numpy()
    np.testing.assert_allclose(cropped, 0.0, atol=1e-6)


# ---------------------------------------------------------------------------
# Study augmentations (cutout, Sobel, noise, rotation) and view lists
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,fraction,side", [(32, 32, 0.5, 16), (20, 30, 0.25, 5), (9, 9, 0.01, 1)])
def test_cutout_area_position_and_zero_fill(h, w, fraction, side):
    x = np.random.default_rng(10).uniform(0.1, 1.0, size=(h, w, 3)).astype(np.float32)
    out = _draw(lambda s: augment.cutout(x, s, size_fraction=fraction), 300)
    zero = np.all(out == 0.0, axis=-1)  # [n, h, w]
    assert (zero.sum(axis=(1, 2)) == side * side).all()
    for z in zero[:20]:  # one axis-aligned square, elsewhere the input unchanged
        rows, cols = np.nonzero(z)
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
    np.testing.assert_array_equal(np.where(zero[..., None], x, out), np.broadcast_to(x, out.shape))
    # Top-left corners cover every position 0 .. n - side, roughly uniformly.
    tops = np.array([np.nonzero(z)[0].min() for z in zero])
    lefts = np.array([np.nonzero(z)[1].min() for z in zero])
    assert tops.min() == 0 and tops.max() == h - side
    assert lefts.min() == 0 and lefts.max() == w - side
    assert abs(tops.mean() - (h - side) / 2) < 0.1 * (h - side) + 0.5


def test_cutout_mean_fill_and_bad_arguments():
    x = np.random.default_rng(11).uniform(0, 1, size=(16, 16, 3)).astype(np.float32)
    out = augment.cutout(x, tf.constant([1, 2]), size_fraction=0.25, fill="mean").numpy()
    changed = np.any(out != x, axis=-1)
    assert changed.sum() == 16
    np.testing.assert_allclose(out[changed], np.broadcast_to(x.mean(axis=(0, 1)), (16, 3)), atol=1e-6)
    with pytest.raises(ValueError, match="fill"):
        augment.cutout(x, tf.constant([1, 2]), fill="noise")
    with pytest.raises(ValueError, match="size_fraction"):
        augment.cutout(x, tf.constant([1, 2]), size_fraction=1.5)


def _sobel_numpy(gray):
    """Reference: 3x3 Sobel with reflect padding (d c b | a b c d), magnitude
    normalised by its maximum."""
    p = np.pad(gray, 1, mode="reflect")
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    h, w = gray.shape
    gx = np.zeros((h, w))
    gy = np.zeros((h, w))
    for i in range(3):
        for j in range(3):
            gx += kx[i, j] * p[i:i + h, j:j + w]
            gy += kx.T[i, j] * p[i:i + h, j:j + w]
    mag = np.sqrt(gx**2 + gy**2)
    return mag / mag.max() if mag.max() > 0 else mag


def test_sobel_of_a_linear_ramp_is_flat_inside_and_zero_at_reflected_edges():
    # Horizontal ramp x[i, j] = a * j: gx = 8a inside, gy = 0; the reflected
    # first and last columns have gx = 0.
    ramp = np.tile((np.arange(12) / 11.0)[None, :, None], (10, 1, 3)).astype(np.float32)
    out = augment.sobel_filter(ramp).numpy()
    assert out.shape == (10, 12, 3)
    np.testing.assert_allclose(out[..., 0], out[..., 2])
    np.testing.assert_allclose(out[:, 1:-1, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(out[:, [0, -1], 0], 0.0, atol=1e-6)
    # The transposed ramp gives the transposed map.
    out_t = augment.sobel_filter(np.transpose(ramp, (1, 0, 2))).numpy()
    np.testing.assert_allclose(out_t[..., 0], out[..., 0].T, atol=1e-5)


def test_sobel_matches_numpy_reference_and_flat_image_is_zero():
    x = np.random.default_rng(12).uniform(0, 1, size=(9, 13, 3)).astype(np.float32)
    gray = x @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    got = augment.sobel_filter(x).numpy()
    np.testing.assert_allclose(got[..., 1], _sobel_numpy(gray.astype(np.float64)), atol=1e-4)
    assert got.min() >= 0.0 and got.max() == pytest.approx(1.0)
    np.testing.assert_allclose(augment.sobel_filter(np.full((8, 8, 3), 0.4, np.float32)), 0.0,
                               atol=1e-3)


def test_gaussian_noise_statistics_and_range():
    x = np.full((64, 64, 3), 0.5, np.float32)
    out = augment.gaussian_noise(x, tf.constant([3, 4]), std=0.05).numpy()
    noise = out - x  # clipping is ~10 sigma away
    assert abs(noise.mean()) < 4 * 0.05 / math.sqrt(noise.size)
    assert noise.std() == pytest.approx(0.05, rel=0.03)
    big = augment.gaussian_noise(x, tf.constant([3, 4]), std=2.0).numpy()
    assert big.min() == 0.0 and big.max() == 1.0
    again = augment.gaussian_noise(x, tf.constant([3, 4]), std=0.05).numpy()
    np.testing.assert_array_equal(out, again)


def test_rotate90_is_exact_and_draws_90_180_270():
    x = np.random.default_rng(13).uniform(0, 1, size=(6, 6, 3)).astype(np.float32)
    out = _draw(lambda s: augment.random_rotate90(x, s), 600)
    ks = []
    for y in out:
        matches = [k for k in range(4) if np.array_equal(y, np.rot90(x, k, axes=(0, 1)))]
        assert len(matches) == 1
        ks.append(matches[0])
    counts = np.bincount(ks, minlength=4)
    assert counts[0] == 0
    for c in counts[1:]:
        assert _within_binomial(c, 600, 1 / 3)
    with_id = _draw(lambda s: augment.random_rotate90(x, s, include_identity=True), 400)
    assert sum(np.array_equal(y, x) for y in with_id) > 50
    wide = augment.random_rotate90(np.zeros((4, 7, 3)), tf.constant([0, 1]))
    assert wide.shape in ((4, 7, 3), (7, 4, 3))


def test_augmentation_names_agree_with_config():
    from simclr_tf import config as config_lib

    assert augment.AUGMENTATIONS == config_lib.AUGMENTATIONS
    assert augment.parse_augmentations(" crop, color ") == ("crop", "color")
    assert augment.parse_augmentations("none") == () == augment.parse_augmentations([])
    with pytest.raises(ValueError, match="allowed names are crop, flip"):
        augment.parse_augmentations("crop,solarize")


def test_default_list_equals_preprocess_for_train():
    x = np.random.default_rng(14).integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
    for s in range(3):
        seed = tf.constant([s, 9])
        for use_blur in (False, True):
            ref = augment.preprocess_for_train(x, seed, 32, 1.0, use_blur=use_blur)
            got = augment.augment_view(x, seed, 32, augment.default_augmentations(use_blur))
            np.testing.assert_array_equal(ref.numpy(), got.numpy())


@pytest.mark.slow
def test_augment_view_lists_in_tf_data():
    x = np.random.default_rng(15).uniform(0, 1, size=(20, 20, 3)).astype(np.float32)
    resized = augment.augment_view(x, tf.constant([0, 0]), 16, "none").numpy()
    np.testing.assert_allclose(resized, augment.preprocess_for_eval(x, 16).numpy(), atol=1e-6)
    sobel = augment.augment_view(x, tf.constant([0, 0]), 16, ["sobel"]).numpy()
    np.testing.assert_allclose(sobel, augment.sobel_filter(resized).numpy(), atol=1e-6)
    names = list(augment.AUGMENTATIONS) + ["noise", "crop"]  # repeats get fresh seeds
    out = _draw(lambda s: augment.augment_view(x, s, 16, names), 8)
    assert out.shape == (8, 16, 16, 3) and out.min() >= 0.0 and out.max() <= 1.0
    again = _draw(lambda s: augment.augment_view(x, s, 16, names), 8)
    np.testing.assert_array_equal(out, again)
    # The rotation is applied after the resize and keeps the image set.
    rot = _draw(lambda s: augment.augment_view(x, s, 20, ["rotate"]), 4)
    for y in rot:
        assert any(np.allclose(y, np.rot90(np.clip(x, 0, 1), k)) for k in (1, 2, 3))
