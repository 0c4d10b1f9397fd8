"""Non-maximum suppression of a soft edge map (structured-edge style).

The edge benchmark used by the RCM reference (seism's contour reader) thins
each predicted soft edge map before thresholding it, with the NMS of Piotr
Dollar's Structured Edge Detection toolbox:

1. orientation: the map is smoothed with a triangle filter of radius 4
   (``convTri``), and the edge normal is
   ``O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi)`` from the second
   derivatives (central differences, one-sided at the borders, as MATLAB's
   ``gradient``);
2. suppression (``edgesNms`` with r=1, s=5, m=1.01): a pixel is zeroed when,
   multiplied by ``m``, it is smaller than the bilinearly interpolated map at
   distance ``d = 1..r`` on either side along the normal; the sample point is
   clamped to ``[0, W-1.001] x [0, H-1.001]``;
3. border damping: within ``s`` pixels of the image border a value is
   multiplied by ``dist / s`` (so the outermost row and column become 0).

Everything here is an independent, vectorised numpy re-implementation of
that published procedure (float32, as the MATLAB/C code).
"""
import numpy as np
from scipy import ndimage

from rc_adapter.core.errors import RCConfigError

__all__ = ['conv_tri', 'edge_orientation', 'edge_nms']


def conv_tri(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable triangle-filter smoothing with symmetric border padding.

    Args:
        image (np.ndarray): HxW float map.
        radius (int): filter radius r >= 1; the 1-D kernel is
            ``[1, 2, ..., r, r+1, r, ..., 1] / (r+1)^2``.

    Returns:
        np.ndarray: the smoothed float32 map.
    """
    r = int(radius)
    if r < 1:
        raise RCConfigError(f'conv_tri: radius must be >= 1, got {radius}')
    kernel = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)])
    kernel = (kernel / float((r + 1)**2)).astype(np.float32)
    out = ndimage.correlate1d(np.asarray(image, np.float32), kernel, axis=0,
                              mode='reflect')
    return ndimage.correlate1d(out, kernel, axis=1, mode='reflect')


def edge_orientation(edge: np.ndarray, radius: int = 4) -> np.ndarray:
    """Edge-normal orientation in [0, pi) from second derivatives.

    Args:
        edge (np.ndarray): HxW soft edge map (H, W >= 2).
        radius (int): smoothing radius (4 in the benchmark).

    Returns:
        np.ndarray: HxW float32 angles; x is the column axis, y the row axis.
    """
    smooth = conv_tri(edge, radius)
    ox = np.gradient(smooth, axis=1)
    oy = np.gradient(smooth, axis=0)
    oxx = np.gradient(ox, axis=1)
    oxy = np.gradient(oy, axis=1)
    oyy = np.gradient(oy, axis=0)
    angle = np.arctan(oyy * np.sign(-oxy) / (oxx + np.float32(1e-5)))
    return np.mod(angle, np.float32(np.pi)).astype(np.float32)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``image`` at float (x=column, y=row) points, clamped as edgesNms."""
    h, w = image.shape
    x = np.clip(x, 0, np.float32(w - 1.001))
    y = np.clip(y, 0, np.float32(h - 1.001))
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    dx0 = x - x0
    dy0 = y - y0
    dx1 = 1 - dx0
    dy1 = 1 - dy0
    return (image[y0, x0] * dx1 * dy1 + image[y0, x0 + 1] * dx0 * dy1 +
            image[y0 + 1, x0] * dx1 * dy0 + image[y0 + 1, x0 + 1] * dx0 * dy0)


def edge_nms(edge: np.ndarray,
             radius: int = 1,
             border: int = 5,
             multiplier: float = 1.01,
             smooth_radius: int = 4) -> np.ndarray:
    """Non-maximum suppression of a soft edge map along the edge normal.

    Args:
        edge (np.ndarray): HxW soft edge map in [0, 1].
        radius (int): suppression radius r along the normal (1).
        border (int): width s of the damped border (5).
        multiplier (float): m; a pixel survives when ``m * e`` is not
            smaller than its neighbours along the normal (1.01).
        smooth_radius (int): triangle-filter radius of the orientation (4).

    Returns:
        np.ndarray: HxW float32 map; suppressed pixels are 0, survivors keep
        their value (times the border damping factor).
    """
    edge = np.asarray(edge, np.float32)
    h, w = edge.shape
    if h < 2 or w < 2:
        return edge.copy()
    out = edge.copy()
    rows, cols = np.nonzero(edge)
    if rows.size:
        angle = edge_orientation(edge, smooth_radius)[rows, cols]
        cos_o, sin_o = np.cos(angle), np.sin(angle)
        value = edge[rows, cols] * np.float32(multiplier)
        fx, fy = cols.astype(np.float32), rows.astype(np.float32)
        suppressed = np.zeros(rows.size, bool)
        for d in range(-radius, radius + 1):
            if d == 0:
                continue
            nb = _bilinear(edge, fx + d * cos_o, fy + d * sin_o)
            suppressed |= value < nb
        out[rows[suppressed], cols[suppressed]] = 0
    s = min(int(border), w // 2, h // 2)
    for i in range(s):
        f = np.float32(i / s)
        out[:, i] *= f
        out[:, w - 1 - i] *= f
    for i in range(s):
        f = np.float32(i / s)
        out[i, :] *= f
        out[h - 1 - i, :] *= f
    return out
