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

Errors raised inside a ``DataLoader`` worker process reach the main process
re-raised by torch with the worker's whole traceback as their message; the
message printed is the original one (plus "in a DataLoader worker"). An
image the data pipeline cannot decode (mmcv's ``LoadImageFromFile``) is an
:class:`~rc_adapter.AnnotationError` naming the file (see
:func:`image_decode_error`), wherever it is raised.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
import traceback
import warnings
from typing import Callable, Iterator, NoReturn, Optional

from ...core.errors import AnnotationError, RCError, ResourceError

__all__ = ['run_cli', 'image_decode_error', 'data_errors', 'EXIT_OK',
           'EXIT_BUG', 'EXIT_USER_ERROR', 'EXIT_ENVIRONMENT',
           'EXIT_INTERRUPTED']

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


#: torch's CPU allocator reports a failed allocation as a RuntimeError.
_CPU_OOM = "DefaultCPUAllocator: can't allocate memory"
#: torch's RuntimeError when a DataLoader worker dies (the OOM killer, or
#: /dev/shm too small for the batches).
_WORKER_DIED = re.compile(r'DataLoader worker \(pid\(?s?\)? ?[^)]*\) '
                          r'(is killed by signal|exited unexpectedly)')
#: First line of an exception torch re-raises from a DataLoader worker.
_WORKER_WRAPPED = re.compile(r'Caught \w+ in DataLoader worker process \d+')
_ERRNO = re.compile(r'\[Errno (\d+)\]')
_OUT_OF_MEMORY = ('lower the batch size, the image size or the number of '
                  'calibration images, or use a machine with more memory')


def _worker_original(text: str) -> Optional[str]:
    """The original message of an exception torch re-raised from a
    DataLoader worker (whose message is the worker's traceback), or None
    when ``text`` is not such a message."""
    if not _WORKER_WRAPPED.match(text):
        return None
    lines = text.rstrip('\n').split('\n')
    start = None
    for i in range(1, len(lines)):
        # The exception line follows the last frame line, at column 0.
        if lines[i] and not lines[i][0].isspace() and \
                lines[i - 1].startswith(' '):
            start = i
    if start is None:
        return None
    message = '\n'.join(lines[start:]).strip()
    head = re.match(r'[\w.]+: ', message)
    return message[head.end():] if head else message


def _message(err: BaseException) -> str:
    """``str(err)``, unwrapped if torch re-raised it from a worker."""
    text = str(err)
    original = _worker_original(text)
    if original is None:
        return text
    return f'{original} (in a DataLoader worker)'


def _environment_message(err: BaseException) -> str:
    """One paragraph for an error of the machine, naming what failed."""
    if isinstance(err, RuntimeError) and _WORKER_DIED.search(str(err)):
        return (f'{str(err).splitlines()[0]}: a data-loading worker process '
                f'was killed, usually because the machine ran out of memory '
                f'(or of shared memory, /dev/shm); lower '
                f'train_dataloader.num_workers or the batch size')
    if not isinstance(err, OSError):
        text = _message(err) or type(err).__name__
        return f'out of memory ({text}); {_OUT_OF_MEMORY}'
    if isinstance(err, ResourceError):
        return _message(err)
    code = err.errno
    if code is None:  # re-raised from a worker: the errno is in the text
        found = _ERRNO.search(str(err))
        code = int(found[1]) if found else None
        message = _message(err)
    else:
        where = ' and '.join(repr(os.fspath(f)) for f in
                             (err.filename, err.filename2) if f is not None)
        what = err.strerror or str(err)
        message = f'{what}: {where}' if where else what
    hint = _HINTS.get(code)
    return f'{message} ({hint})' if hint else message


def _is_environment_error(err: BaseException) -> bool:
    if isinstance(err, (OSError, MemoryError)):
        return not isinstance(err, RCError) or isinstance(err,
                                                           ResourceError)
    if isinstance(err, RuntimeError) and (
            _CPU_OOM in str(err) or _WORKER_DIED.search(str(err))):
        return True
    torch = sys.modules.get('torch')
    oom = getattr(torch, 'OutOfMemoryError', None) if torch else None
    return oom is not None and isinstance(err, oom)


def _load_image_code() -> Optional[object]:
    """The code object of mmcv's ``LoadImageFromFile.transform`` (None if
    mmcv's transforms were never imported: then no error came from it)."""
    module = sys.modules.get('mmcv.transforms.loading')
    loader = getattr(module, 'LoadImageFromFile', None)
    return getattr(getattr(loader, 'transform', None), '__code__', None)


def image_decode_error(err: BaseException) -> Optional[AnnotationError]:
    """An :class:`~rc_adapter.AnnotationError` naming the image if ``err``
    is mmcv's ``LoadImageFromFile`` failing to decode a file, else None.

    mmcv reports an undecodable file (a truncated or damaged JPEG/PNG) with
    an ``AssertionError`` ("failed to load image"), an empty one with a
    ``cv2.error``, and with the pillow backend a PIL error; none names the
    file in a way the tools can tell from a bug. The error is recognised
    by the frame it was raised in (in-process), or, when torch re-raised it
    from a DataLoader worker, by that frame in the worker's traceback text.
    Errors of the machine (an ``OSError`` with an errno: missing file,
    permission, I/O), memory errors and errors of the
    :class:`~rc_adapter.RCError` family are left as they are.

    Args:
        err: An exception raised while loading data.

    Returns:
        The error to raise instead (``raise mapped from err``), or None.
    """
    if isinstance(err, (RCError, MemoryError, KeyboardInterrupt)) or (
            isinstance(err, OSError) and err.errno is not None):
        return None
    filename = None
    code = _load_image_code()
    tb = err.__traceback__
    while tb is not None:
        if code is not None and tb.tb_frame.f_code is code:
            filename = tb.tb_frame.f_locals.get('filename', '?')
        tb = tb.tb_next
    reason = str(err).strip() or type(err).__name__
    if filename is None:
        text = str(err)
        original = _worker_original(text)
        if original is None or _ERRNO.match(original) or not re.search(
                r'mmcv[/\\]transforms[/\\]loading\.py", line \d+, in '
                r'transform\n', text):
            return None
        named = re.search(r'failed to load image: (.+)', original)
        filename = named[1].strip() if named else \
            '(a file of the dataset: run with num_workers=0 to name it)'
        reason = original
    reason = reason.splitlines()[-1]
    if reason.startswith('failed to load image'):
        reason = 'the decoder returned no image'
    return AnnotationError(
        f'image {filename} cannot be decoded ({reason}): the file is '
        f'damaged, truncated or not an image; replace it or remove the '
        f'sample from the split')


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Turns image decoding failures of the data pipeline raised inside
    the block into :class:`~rc_adapter.AnnotationError` naming the file
    (:func:`image_decode_error`); everything else passes unchanged."""
    try:
        yield
    except Exception as err:  # noqa: B902 - re-raised unless an image
        mapped = image_decode_error(err)
        if mapped is None:
            raise
        raise mapped from err


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
        with data_errors():
            result = main()
    except KeyboardInterrupt:
        print(f'interrupted; {interrupted}', file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BaseException as err:  # noqa: B902 - re-raised unless handled
        if _is_environment_error(err):
            code, message = EXIT_ENVIRONMENT, _environment_message(err)
        elif isinstance(err, RCError):
            code, message = EXIT_USER_ERROR, _message(err)
        else:
            raise  # a bug: keep the traceback (exit status 1)
        if debug:
            traceback.print_exc()
        print(f'error: {message}', file=sys.stderr)
        sys.exit(code)
    if _close_process_group():
        _exit_without_teardown(result or EXIT_OK)
    sys.exit(result or EXIT_OK)


def _close_process_group() -> bool:
    """Ends the process group of a distributed run (torchrun) once the
    tool is done; the ranks first meet at a barrier, so no rank ends the
    group while another still talks to it (rank 0 writes the bank after
    the others are done).

    Returns:
        Whether there was a process group (a distributed run).
    """
    dist = sys.modules.get('torch.distributed')
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        return True
    return False


def _exit_without_teardown(code: int) -> NoReturn:
    """Ends a distributed run's process after its work: the exit handlers
    run (logging flushed, temporary files removed), stdout/stderr are
    flushed, then the process leaves without the interpreter's teardown.

    Objects still referring to the ended process group (the DDP wrapper,
    mmengine's local group) would otherwise be destroyed during that
    teardown, where gloo's worker threads can abort the process
    (``terminate called without an active exception``, SIGABRT) after
    the run has succeeded, failing the whole torchrun job."""
    import atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing to keep
            pass
    os._exit(code)
