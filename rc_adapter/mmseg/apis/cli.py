"""``run_cli``: the one exit-code convention of every tool.

=====  ===============================================================
code   meaning
=====  ===============================================================
0      success
1      a bug: an unexpected exception, printed with its traceback
2      an error the user can fix (an :class:`rc_adapter.RCError`: bad
       argument or config key, unknown task, damaged or foreign bank,
       unsafe checkpoint, unreadable label ...), one paragraph on stderr
3      the machine refused (``OSError`` such as permission denied, disk
       full, a missing device; ``MemoryError``; an out-of-memory error of
       torch), one paragraph naming the file or resource
130    interrupted (Ctrl-C): says what was and was not written
=====  ===============================================================

``RC_DEBUG=1`` in the environment adds the traceback to codes 2 and 3.
"""
from __future__ import annotations

import errno
import os
import sys
import traceback
import warnings
from typing import Callable, NoReturn, Optional

from ...core.errors import RCError, ResourceError

__all__ = ['run_cli', 'EXIT_OK', 'EXIT_BUG', 'EXIT_USER_ERROR',
           'EXIT_ENVIRONMENT', 'EXIT_INTERRUPTED']

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130

_HINTS = {
    errno.ENOSPC: 'the disk is full: free some space or write elsewhere',
    errno.EDQUOT: 'the disk quota is exceeded',
    errno.EACCES: 'check the permissions of the file and its folder',
    errno.EPERM: 'check the permissions of the file and its folder',
    errno.EROFS: 'the file system is read-only: write elsewhere',
    errno.ENOTDIR: 'a parent of the path is a file, not a folder',
    errno.EISDIR: 'the path is a folder, a file was expected',
    errno.EEXIST: 'something already exists at that path',
}


def _environment_message(err: BaseException) -> str:
    """One paragraph for an error of the machine, naming what failed."""
    if isinstance(err, MemoryError) or not isinstance(err, OSError):
        text = str(err) or type(err).__name__
        return (f'out of memory ({text}); lower the batch size, the image '
                f'size or the number of calibration images, or use a '
                f'machine with more memory')
    if isinstance(err, ResourceError) or err.errno is None:
        return str(err)
    where = ' and '.join(repr(os.fspath(f)) for f in
                         (err.filename, err.filename2) if f is not None)
    what = err.strerror or str(err)
    message = f'{what}: {where}' if where else what
    hint = _HINTS.get(err.errno)
    return f'{message} ({hint})' if hint else message


def _is_environment_error(err: BaseException) -> bool:
    if isinstance(err, (OSError, MemoryError)):
        return not isinstance(err, RCError) or isinstance(err,
                                                           ResourceError)
    torch = sys.modules.get('torch')
    oom = getattr(torch, 'OutOfMemoryError', None) if torch else None
    return oom is not None and isinstance(err, oom)


def run_cli(main: Callable[[], Optional[int]], *,
            interrupted: str = 'nothing was written') -> NoReturn:
    """Runs a tool's ``main`` under the exit-code convention (module doc).

    Deprecation warnings of rc_adapter (old config keys, old names) are
    shown.

    Args:
        main: The tool; returns an exit status (None = 0) or raises.
        interrupted: What an interruption leaves behind, printed after
            ``interrupted;`` (e.g. ``'the bank was not changed'``).
    """
    warnings.filterwarnings('default', category=DeprecationWarning,
                            module=r'rc_adapter(\.|$)')
    debug = bool(os.environ.get('RC_DEBUG'))
    try:
        result = main()
    except KeyboardInterrupt:
        print(f'interrupted; {interrupted}', file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BaseException as err:  # noqa: B902 - re-raised unless handled
        if _is_environment_error(err):
            code, message = EXIT_ENVIRONMENT, _environment_message(err)
        elif isinstance(err, RCError):
            code, message = EXIT_USER_ERROR, str(err)
        else:
            raise  # a bug: keep the traceback (exit status 1)
        if debug:
            traceback.print_exc()
        print(f'error: {message}', file=sys.stderr)
        sys.exit(code)
    sys.exit(result or EXIT_OK)
