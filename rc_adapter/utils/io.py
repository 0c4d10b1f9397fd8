"""Atomic file writes: a temporary file in the target's folder, then a
rename, so a reader never sees a half-written file and an interrupted write
leaves the old file (or none) in place."""
from __future__ import annotations

import json
import os
import secrets
from typing import Any, Union

__all__ = ['atomic_write_bytes', 'atomic_write_text', 'save_json']

PathLike = Union[str, 'os.PathLike[str]']


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (parent folders are created).

    Args:
        path: The file to write.
        data: Its new contents.

    Raises:
        OSError: the folder cannot be created or written (permission, disk
            space); no temporary file is left behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Created with mode 0o666 so the umask applies, as for any other tool
    # (mkstemp would make it owner-only).
    while True:
        tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-'
                           f'{secrets.token_hex(6)}')
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode('utf-8'))


def save_json(path: PathLike, data: Any, *, indent: int = 2) -> None:
    """Writes ``data`` as JSON to ``path`` atomically.

    Args:
        path: The ``.json`` file.
        data: JSON-serialisable data (see
            :func:`rc_adapter.utils.config.to_plain` for config objects).
        indent: Indentation. Defaults to 2.
    """
    atomic_write_text(path, json.dumps(data, indent=indent) + '\n')
