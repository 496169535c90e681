"""Streaming over feature rows in chunks, and the statistics of the standardisation.

Everything after extraction reads features in chunks of about
:data:`CHUNK_BYTES` (64 MB) of consecutive rows, so an in-memory array and a
memmap take the same code path and give the same result bit for bit.
"""

import numpy as np

CHUNK_BYTES = 64 << 20  # rows streamed per chunk: about this many bytes of float32 features


def chunk_rows(dim):
    """Rows per chunk of ``dim``-dimensional float32 features."""
    return max(256, CHUNK_BYTES // (4 * max(int(dim), 1)))


def num_rows(x, rows):
    return len(x) if rows is None else len(rows)


def chunks(x, y=None, rows=None, size=None):
    """Yields float32 chunks of ``size`` (default :func:`chunk_rows`) consecutive
    rows of ``x`` (of ``x[rows]`` when ``rows`` is given), with the matching
    int32 labels when ``y`` is given."""
    step = size or chunk_rows(x.shape[1])
    for start in range(0, num_rows(x, rows), step):
        index = slice(start, start + step) if rows is None else rows[start:start + step]
        chunk = np.asarray(x[index], np.float32)
        yield chunk if y is None else (chunk, np.asarray(y[index], np.int32))


def standardisation(features, rows=None):
    """``(mean float32 [D], inv_std float32 [D])`` of ``features`` (``[rows]``),
    in two streaming passes with float64 sums; ``inv_std = 1 / (std + 1e-6)``."""
    n = num_rows(features, rows)
    total = np.zeros(features.shape[1], np.float64)
    for chunk in chunks(features, rows=rows):
        total += chunk.sum(axis=0, dtype=np.float64)
    mean = (total / max(n, 1)).astype(np.float32)
    squares = np.zeros(features.shape[1], np.float64)
    for chunk in chunks(features, rows=rows):
        centred = chunk - mean
        squares += np.einsum("nd,nd->d", centred, centred, dtype=np.float64)
    std = np.sqrt(squares / max(n, 1))
    return mean, (1.0 / (std + 1e-6)).astype(np.float32)

