"""The CPU kernel of the data path: gather, crop, flip and normalise a batch in one pass over its pixels.

Compiled by numba on first use (and cached beside this file, or in numba's user cache when this folder is
read-only); it releases the GIL, so several batches can be prepared at once in threads. Imported lazily:
``import vdd_bench`` does not load numba.

Why a compiled loop: the same work as torch/numpy operations takes several passes over float32 data four
times the size of the uint8 crop (a fancy-indexed crop, a flip, a float copy, a multiply, an add), and on a
2-core machine those passes are bound by memory bandwidth; one fused pass writes each float once.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def crop_normalise(images, index, rows, cols, scale, shift, out):  # pragma: no cover - compiled
    """out[b, c, y, x] = float32(images[index[b], c, rows[b, y], cols[b, x]]) * scale[c] + shift[c].

    The product and the sum are rounded separately (no fused multiply-add), as torch's ``mul`` then ``add``
    round them, so this kernel and the torch formulation give the same bits. A column map that steps by one
    pixel forwards or backwards (every crop, flipped or not) is read as a run, which the compiler vectorises;
    any other map (reflect padding at a border) is gathered pixel by pixel. Indices must be in range: the
    caller checks them (unsigned indexing here skips numba's negative-index handling)."""
    size = out.shape[3]
    last = size - 1
    for b in range(index.shape[0]):
        image = np.uint64(index[b])
        start = np.uint64(cols[b, 0])
        span = cols[b, last] - cols[b, 0]
        if span == last:
            _forward_run(images, image, rows[b], start, scale, shift, out[b])
        elif span == -last:
            _backward_run(images, image, rows[b], start, scale, shift, out[b])
        else:
            _gathered(images, image, rows[b], cols[b], scale, shift, out[b])


# Three loops rather than one with the column computed per pixel: each inner loop has to be a plain run (or
# a plain gather) for the compiler to vectorise it; one loop with a branch or a signed stride ran 2x slower.
@njit(nogil=True, cache=True, inline="always")
def _forward_run(images, image, rows, start, scale, shift, out):  # pragma: no cover - compiled
    for c in range(out.shape[0]):
        a, z = scale[c], shift[c]
        for y in range(out.shape[1]):
            row = np.uint64(rows[y])
            for x in range(out.shape[2]):
                out[c, y, x] = np.float32(images[image, c, row, start + np.uint64(x)]) * a + z


@njit(nogil=True, cache=True, inline="always")
def _backward_run(images, image, rows, start, scale, shift, out):  # pragma: no cover - compiled
    for c in range(out.shape[0]):
        a, z = scale[c], shift[c]
        for y in range(out.shape[1]):
            row = np.uint64(rows[y])
            for x in range(out.shape[2]):
                out[c, y, x] = np.float32(images[image, c, row, start - np.uint64(x)]) * a + z


@njit(nogil=True, cache=True, inline="always")
def _gathered(images, image, rows, cols, scale, shift, out):  # pragma: no cover - compiled
    for c in range(out.shape[0]):
        a, z = scale[c], shift[c]
        for y in range(out.shape[1]):
            row = np.uint64(rows[y])
            for x in range(out.shape[2]):
                out[c, y, x] = np.float32(images[image, c, row, np.uint64(cols[x])]) * a + z
