"""The PASCAL VOC colour palette (numpy only).

Used for the class colours of the multi-task datasets' ``metainfo`` and for
the synthetic benchmark's preview sheets.
"""
import numpy as np

__all__ = ['voc_palette']


def voc_palette(n: int) -> np.ndarray:
    """The VOC bit-interleaved palette of ``n`` classes.

    Bits 0, 1 and 2 of the class id go to the most significant bit of red,
    green and blue, bits 3, 4 and 5 to the next bit, and so on, so class 0 is
    black, 1 dark red, 2 dark green, 15 (person) (192, 128, 128).

    Args:
        n: Number of classes (entries >= 2**24 repeat colours).

    Returns:
        An ``(n, 3)`` uint8 array of RGB colours; ``.tolist()`` gives the
        ``[[r, g, b], ...]`` form of mmseg's ``metainfo['palette']``.
    """
    if n < 0:
        raise ValueError(f'voc_palette: n must be >= 0, got {n}')
    code = np.arange(n, dtype=np.int64)
    pal = np.zeros((n, 3), np.int64)
    for bit in range(7, -1, -1):
        for channel in range(3):
            pal[:, channel] |= ((code >> channel) & 1) << bit
        code >>= 3
    return pal.astype(np.uint8)
