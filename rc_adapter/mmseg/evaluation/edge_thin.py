"""Morphological thinning of binary edge maps (``bwmorph(..., 'thin', Inf)``).

The algorithm is the two-subiteration parallel thinning of Guo and Hall
(Comm. ACM 32(3), 1989) as described by Lam, Lee and Suen (IEEE TPAMI 14(9),
1992, p. 879), which MATLAB's ``bwmorph 'thin'`` and
``skimage.morphology.thin`` both implement. With the 8 neighbours of a pixel
numbered x1..x8 counter-clockwise from the east (x1 = E, x2 = NE, x3 = N,
..., x8 = SE), a foreground pixel is deleted in the first (second)
subiteration when

* G1: exactly one of the four pairs ``(x1, x2 or x3)``, ``(x3, x4 or x5)``,
  ``(x5, x6 or x7)``, ``(x7, x8 or x1)`` has the first pixel off and one of
  the other two on;
* G2: ``2 <= min(n1, n2) <= 3`` with ``n1`` the number of on pairs
  ``x(2k-1) or x(2k)`` and ``n2`` of ``x(2k) or x(2k+1)``, k = 1..4;
* G3: ``(x2 or x3 or not x8) and x1`` is false
  (second subiteration, G3': ``(x6 or x7 or not x4) and x5`` is false).

Subiterations alternate until a full iteration deletes nothing. Pixels
outside the image are off.

Unlike the image-wide implementation, :func:`thin` only visits foreground
pixels, so its cost grows with the number of edge pixels, not the image size
(edge maps after NMS are sparse and nearly thin already).
"""
import numpy as np

__all__ = ['thin']


def _lookup_tables():
    """Deletion tables of the two subiterations, indexed by the 8-bit
    neighbourhood code (bit k-1 = neighbour x_k)."""
    codes = np.arange(256)
    x = [None] + [(codes >> k) & 1 for k in range(8)]  # x[1]..x[8]
    x.append(x[1])  # x9 = x1
    b = sum(((x[2 * i - 1] == 0) & ((x[2 * i] == 1) | (x[2 * i + 1] == 1)))
            .astype(int) for i in range(1, 5))
    n1 = sum((x[2 * k - 1] | x[2 * k]) for k in range(1, 5))
    n2 = sum((x[2 * k] | x[2 * k + 1]) for k in range(1, 5))
    m = np.minimum(n1, n2)
    g12 = (b == 1) & (m >= 2) & (m <= 3)
    g3 = ((x[2] | x[3] | (1 - x[8])) & x[1]) == 0
    g3p = ((x[6] | x[7] | (1 - x[4])) & x[5]) == 0
    return g12 & g3, g12 & g3p


_DELETE_FIRST, _DELETE_SECOND = _lookup_tables()


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary map to 8-connected one-pixel-wide curves.

    Args:
        mask (np.ndarray): HxW binary map.

    Returns:
        np.ndarray: HxW bool map, a subset of ``mask``.
    """
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    flat = pad.ravel()
    stride = w + 2
    # x1..x8: E, NE, N, NW, W, SW, S, SE
    offsets = (1, 1 - stride, -stride, -1 - stride, -1, stride - 1, stride,
               stride + 1)
    idx = np.flatnonzero(flat)
    changed = True
    while changed and idx.size:
        changed = False
        for table in (_DELETE_FIRST, _DELETE_SECOND):
            code = np.zeros(idx.size, np.uint8)
            for bit, off in enumerate(offsets):
                code |= flat[idx + off] << np.uint8(bit)
            delete = table[code]
            if delete.any():
                flat[idx[delete]] = 0
                idx = idx[~delete]
                changed = True
    return pad[1:-1, 1:-1].astype(bool)
