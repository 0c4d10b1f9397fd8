"""Label files of PASCAL_MT / NYUD_MT: readers and decoders.

The decoding rules per task are those of the official RCM implementation
(github.com/menelaoskanakis/RCM), written out in ``docs/datasets.md``. They
are used by the ``LoadMTAnnotations`` transform
(``rc_adapter.mmseg.transforms.loading``), by the datasets (the person
filter of ``human_parts``) and by :func:`check_annotations`.

Every problem with a user's file -- missing, unreadable, malformed, of the
wrong size -- raises :class:`~rc_adapter.core.errors.AnnotationError` naming
the task and the file.
"""
from __future__ import annotations

import os
import struct
import zlib
from contextlib import contextmanager
from typing import BinaryIO, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import scipy.io as sio
from PIL import Image

from ...core.errors import AnnotationError
from .meta import HUMAN_PART_IDS, PERSON_CLASS_ID

__all__ = ['read_image_file', 'image_size', 'read_mat', 'mat_variables',
           'decode_normals', 'edges_from_labelmap', 'decode_human_parts',
           'person_class_ids', 'check_file']


def check_file(task: str, path: Optional[str]) -> None:
    """Raise ``AnnotationError`` unless ``path`` is an existing file.

    Args:
        task: Task name for the message.
        path: File path (None means the sample lists no file).
    """
    if path is None or not os.path.isfile(path):
        raise AnnotationError(f'[{task}] label file not found: {path}')


def read_image_file(task: str, path: Optional[str],
                    flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image file with OpenCV; colour images come back RGB.

    Args:
        task: Task name for error messages.
        path: File path.
        flags: ``cv2.imread`` flags.

    Returns:
        HxW or HxWxC array.
    """
    check_file(task, path)
    img = cv2.imread(path, flags)
    if img is None:
        raise AnnotationError(f'[{task}] cannot read image file {path}')
    if img.ndim == 3 and img.shape[2] >= 3:
        img = np.ascontiguousarray(img[..., 2::-1])
    return img


def image_size(task: str, path: Optional[str]) -> Tuple[int, int]:
    """(H, W) of an image file from its header (PIL; no pixel decode).

    Args:
        task: Task name (or ``'image'``) for error messages.
        path: File path.

    Returns:
        ``(height, width)``.
    """
    check_file(task, path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as exc:
        raise AnnotationError(
            f'[{task}] cannot read image file {path}: {exc}') from exc
    return h, w


def read_mat(task: str, path: Optional[str], key: str) -> np.ndarray:
    """Load one variable of a MATLAB file.

    Args:
        task: Task name for error messages.
        path: ``.mat`` path.
        key: Variable name.

    Returns:
        The variable.
    """
    check_file(task, path)
    try:
        mat = sio.loadmat(path, variable_names=[key])
    except Exception as exc:  # scipy raises several types on bad files
        raise AnnotationError(
            f'[{task}] cannot read MATLAB file {path}: {exc}') from exc
    if key not in mat:
        raise AnnotationError(f'[{task}] {path} has no variable {key!r}')
    return mat[key]


def decode_normals(rgb: np.ndarray, mask: Optional[np.ndarray] = None,
                   renormalize: bool = True) -> np.ndarray:
    """8-bit normals -> float32 HxWx3 via ``2 * v / 255 - 1``.

    Args:
        rgb: uint8 HxWx3, channels x, y, z.
        mask: Optional bool HxW; pixels outside are zeroed (invalid).
        renormalize: Rescale every vector to unit length. Vectors shorter
            than 0.5 after decoding carry no direction (8-bit quantisation
            and JPEG noise stay far below that) and are set to zero, i.e.
            invalid. The reference does not renormalize the ground truth;
            pass False for its exact values.

    Returns:
        float32 HxWx3; all-zero means invalid.
    """
    n = rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
    if renormalize:
        norm = np.linalg.norm(n, axis=2, keepdims=True)
        n = np.where(norm >= 0.5, n / np.maximum(norm, 1e-12), 0.0)
    if mask is not None:
        n = n * mask[..., None]
    return n.astype(np.float32)


def edges_from_labelmap(label_map: np.ndarray) -> np.ndarray:
    """PASCAL edges: Laplacian of the Context label map, |.| > 0, thinned.

    Args:
        label_map: HxW integer Context labels.

    Returns:
        uint8 HxW in {0, 1}.
    """
    lap = cv2.Laplacian(np.ascontiguousarray(label_map, dtype=np.float64),
                        cv2.CV_64F)
    from skimage.morphology import thin  # ~0.4 s to import: on first use
    return thin(np.abs(lap) > 0).astype(np.uint8)


def _as_str(x):
    a = np.asarray(x)
    while a.dtype == object and a.size == 1:
        a = np.asarray(a.ravel()[0])
    if a.dtype.kind in 'US':
        return str(a.ravel()[0]) if a.ndim else str(a)
    raise TypeError(f'not a string: {x!r}')


def _field(rec, name, index):
    """A struct field by name (or by position, as public loaders index)."""
    names = rec.dtype.names or ()
    return rec[name] if name in names else rec[index]


@contextmanager
def _anno_layout(task: str, path: str) -> Iterator[None]:
    """Turn a struct-access error on a foreign PascalParts file into an
    ``AnnotationError`` naming the file."""
    try:
        yield
    except AnnotationError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError,
            ValueError) as exc:
        raise AnnotationError(
            f'[{task}] {path}: unexpected PASCAL-Part anno layout ({exc})'
        ) from exc


def _objects(task: str, path: str) -> list:
    """The ``objects`` struct array of a PascalParts ``anno`` variable."""
    anno = read_mat(task, path, 'anno')
    with _anno_layout(task, path):
        objects = _field(anno[0, 0], 'objects', 1)
        return list(objects.ravel()) if objects.size else []


def decode_human_parts(path: str, shape: Optional[Tuple[int, int]] = None,
                       task: str = 'human_parts') -> Tuple[np.ndarray, bool]:
    """PASCAL-Part ``anno`` -> coarse human-part map (``docs/datasets.md``).

    Rules: only person objects (class 15) with part annotations are
    painted, using ``HUMAN_PART_IDS``; an image with no person gets all 255
    (ignored); an image whose persons carry no parts gets all 0.

    Args:
        path: ``PascalParts/<id>.mat``.
        shape: Image (H, W) for the all-255 map and the mask size check.
        task: Task name for error messages.

    Returns:
        uint8 HxW map (0 bg, 1..6 parts, 255 ignore) and whether the image
        has a person.
    """
    objects = _objects(task, path)
    with _anno_layout(task, path):
        return _paint_parts(task, path, objects, shape)


def _paint_parts(task: str, path: str, objects: list,
                 shape: Optional[Tuple[int, int]]) -> Tuple[np.ndarray, bool]:
    """The body of :func:`decode_human_parts` over the ``objects``."""
    target = None
    has_person = False
    for obj in objects:
        cls = int(np.asarray(_field(obj, 'class_ind', 1)).ravel()[0])
        if cls != PERSON_CLASS_ID:
            continue
        has_person = True
        parts = _field(obj, 'parts', 3)
        if parts.size == 0:
            continue
        for part in parts.ravel():
            name = _as_str(_field(part, 'part_name', 0))
            if name not in HUMAN_PART_IDS:
                raise AnnotationError(
                    f'[{task}] {path}: unknown part name {name!r}')
            mask = np.asarray(_field(part, 'mask', 1)).astype(bool)
            if shape is not None and mask.shape != tuple(shape):
                raise AnnotationError(
                    f'[{task}] {path}: part mask {mask.shape} differs from '
                    f'image {tuple(shape)}')
            if target is None:
                target = np.zeros(mask.shape, np.uint8)
            elif mask.shape != target.shape:
                raise AnnotationError(
                    f'[{task}] {path}: part masks of different sizes')
            target[mask] = HUMAN_PART_IDS[name]
    if target is None:
        if shape is None:
            if not len(objects):
                raise AnnotationError(
                    f'[{task}] {path}: no objects and no image size given')
            shape = np.asarray(_field(objects[0], 'mask', 2)).shape
        fill = 0 if has_person else 255
        target = np.full(tuple(shape), fill, np.uint8)
    return target, has_person


def person_class_ids(path: str, task: str = 'human_parts') -> List[int]:
    """Class ids of the objects (with a non-empty mask) of a PascalParts
    file, as the reference's ``ImageSets/Parts`` cache lists them.

    Args:
        path: ``PascalParts/<id>.mat``.
        task: Task name for error messages.

    Returns:
        The class id of every object with a non-empty mask.
    """
    ids = []
    objects = _objects(task, path)
    with _anno_layout(task, path):
        for obj in objects:
            if np.asarray(_field(obj, 'mask', 2)).sum() > 0:
                ids.append(int(np.asarray(
                    _field(obj, 'class_ind', 1)).ravel()[0]))
    return ids


# MATLAB 5 array classes (the low byte of the array-flags word)
_MAT5_CLASSES = {1: 'cell', 2: 'struct', 3: 'object', 4: 'char',
                 5: 'sparse', 6: 'double', 7: 'single', 8: 'int8',
                 9: 'uint8', 10: 'int16', 11: 'uint16', 12: 'int32',
                 13: 'uint32', 14: 'int64', 15: 'uint64', 16: 'function',
                 17: 'opaque'}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MAT5_HEAD = 512  # bytes of a variable enough for its flags, dims and name


def _inflate_head(f: BinaryIO, nbytes: int, want: int) -> bytes:
    """The first ``want`` bytes of the zlib stream of ``nbytes`` at ``f``."""
    inflater = zlib.decompressobj()
    out, left = b'', nbytes
    while len(out) < want and left > 0:
        chunk = f.read(min(4096, left))
        if not chunk:
            break
        left -= len(chunk)
        out += inflater.decompress(chunk, want - len(out))
    return out


def _mat5_matrix_head(body: bytes, order: str) -> Tuple[str, tuple, str]:
    """(name, shape, class) from the start of a miMATRIX element's body."""
    pos, parts = 0, []
    for _ in range(3):  # array flags, dimensions, array name
        word = struct.unpack_from(order + 'I', body, pos)[0]
        if word >> 16:  # small data element: size and type in one word
            size, start, pos = word >> 16, pos + 4, pos + 8
        else:
            size = struct.unpack_from(order + 'I', body, pos + 4)[0]
            start, pos = pos + 8, pos + 8 + size + (-size) % 8
        if start + size > len(body):
            raise ValueError('variable header longer than expected')
        parts.append(body[start:start + size])
    flags = struct.unpack_from(order + 'I', parts[0])[0]
    cls = _MAT5_CLASSES.get(flags & 0xFF, f'class {flags & 0xFF}')
    if flags & 0x200:  # the logical bit
        cls = 'logical'
    shape = struct.unpack(f'{order}{len(parts[1]) // 4}i', parts[1])
    if cls == 'char':  # as whosmat: strings, not their characters
        shape = shape[:-1]
    return parts[2].decode('latin-1'), tuple(shape), cls


def _mat5_variables(path: str) -> Optional[dict]:
    """Variable headers of a MATLAB 5 file, reading (and, for compressed
    variables, inflating) only the first bytes of each variable; None for
    a file that is not MATLAB 5 (left to scipy). A variable running past
    the end of the file raises ``ValueError``: the file is truncated."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(128)
        order = {b'IM': '<', b'MI': '>'}.get(head[126:128])
        if len(head) < 128 or order is None or struct.unpack(
                order + 'H', head[124:126])[0] != 0x0100:
            return None
        found, pos = {}, 128
        while pos + 8 <= size:
            f.seek(pos)
            mtype, nbytes = struct.unpack(order + 'II', f.read(8))
            if pos + 8 + nbytes > size:
                raise ValueError(f'truncated: a variable needs {nbytes} bytes'
                                 f' after byte {pos + 8} of {size}')
            if mtype == _MI_COMPRESSED:
                body = _inflate_head(f, nbytes, _MAT5_HEAD)
                mtype = struct.unpack_from(order + 'I', body)[0]
                body = body[8:]
            else:
                body = f.read(min(nbytes, _MAT5_HEAD))
            if mtype != _MI_MATRIX:
                raise ValueError(f'unexpected data element type {mtype}')
            name, shape, cls = _mat5_matrix_head(body, order)
            found[name] = (shape, cls)
            pos += 8 + nbytes
    return found


def mat_variables(task: str, path: Optional[str]) -> dict:
    """Name -> (shape, MATLAB class) of the variables of a ``.mat`` file,
    from the variable headers only.

    MATLAB 5 files (what PASCAL_MT and NYUD_MT ship) are read here: the tag
    of each variable and, for a compressed one, the first few hundred
    inflated bytes, so the cost does not grow with the variable (scipy's
    ``whosmat`` inflates whole compressed variables: a PascalParts struct
    costs as much as loading it). Other versions go to ``scipy.io.whosmat``.
    Names, shapes and classes are those ``whosmat`` reports.

    Args:
        task: Task name for error messages.
        path: ``.mat`` path.

    Returns:
        ``{name: (shape tuple, class name such as 'double' or 'struct')}``.
    """
    check_file(task, path)
    try:
        found = _mat5_variables(path)
        if found is None:
            found = {name: (tuple(shape), cls)
                     for name, shape, cls in sio.whosmat(path)}
    except Exception as exc:  # struct, zlib and scipy raise several types
        raise AnnotationError(
            f'[{task}] cannot read MATLAB file {path}: {exc}') from exc
    if not found:
        raise AnnotationError(f'[{task}] {path}: empty MATLAB file')
    return found
