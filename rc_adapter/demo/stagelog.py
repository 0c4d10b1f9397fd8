"""Running the demo's stages in one process: the equivalent tool command,
a short progress view, the full log, and what each stage cost.

Each stage of ``make demo`` calls the library function a tool calls
(``tools/add_task.py`` -> ``apis.train_task`` ...). :class:`StageLog`
prints the stage's name and the tool command that does the same, sends
everything the stage prints (mmengine's log, warnings) to the log file and
shows only the lines worth watching on the console, and records per stage
the wall time, the CPU time of this process (``time.process_time``) and of
its children (``RUSAGE_CHILDREN``), and the load average before and after:
on a shared machine the CPU time says what the stage costs, the wall time
only what it took that day.
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Optional, Sequence, TextIO

__all__ = ['StageRecord', 'StageLog', 'tool_command', 'PROGRESS_KEYS']

#: Lines of a stage's output shown on the console (the log has them all).
PROGRESS_KEYS = ('Iter(train)', 'pretrain [', 'function preserved',
                 'per-task parameter cost', 'wrote task', 'error:',
                 'Error', 'RSA:')


def tool_command(tool: str, *args: object,
                 options: Optional[dict] = None) -> str:
    """The shell command of a tool run, e.g. ``python tools/test.py CONFIG
    --bank B --cfg-options 'model.tasks=[...]'``.

    Args:
        tool: The tool's path (``tools/add_task.py``).
        args: Positional arguments and flags, in order (None is skipped).
        options: ``--cfg-options`` entries ``{key: value}``; lists of
            strings are written as mmengine's ``DictAction`` reads them
            (``model.tasks=[semseg,depth]``).

    Returns:
        One line a shell runs as it is.
    """
    words = ['python', tool] + [str(a) for a in args if a is not None]
    if options:
        words.append('--cfg-options')
        words += [f'{key}={_option_value(value)}'
                  for key, value in options.items()]
    return ' '.join(shlex.quote(w) for w in words)


def _option_value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(_option_value(v) for v in value) + ']'
    if isinstance(value, dict):
        return '{' + ','.join(f'{k}:{_option_value(v)}'
                              for k, v in value.items()) + '}'
    return str(value)


@dataclass
class StageRecord:
    """What one stage cost.

    Attributes:
        name: The stage.
        wall: Wall-clock seconds.
        cpu: CPU seconds of this process (user + system, every thread).
        children_cpu: CPU seconds of finished child processes.
        load_start: 1-minute load average when the stage started.
        load_end: The same when it ended.
        command: The equivalent tool command (None for the demo's own
            bookkeeping, e.g. the report).
    """

    name: str
    wall: float
    cpu: float
    children_cpu: float
    load_start: float
    load_end: float
    command: Optional[str] = None

    def as_dict(self) -> dict:
        """The record as a JSON-ready dict."""
        return asdict(self)


class _Tee(io.TextIOBase):
    """Writes everything to ``log`` and the lines containing one of
    ``keys`` (their last 150 characters) to ``console``."""

    def __init__(self, log: TextIO, console: TextIO,
                 keys: Sequence[str]) -> None:
        self.log, self.console, self.keys = log, console, tuple(keys)
        self._line = ''

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self._line += text
        while '\n' in self._line:
            line, self._line = self._line.split('\n', 1)
            if any(k in line for k in self.keys):
                self.console.write('   ' + line.rstrip()[-150:] + '\n')
                self.console.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return float('nan')


class StageLog:
    """Runs stages with their command shown and their cost recorded.

    Args:
        log_path: The full log (created anew).
        console: Where progress goes (default: the process's stdout at
            construction time).
        keys: Which output lines are shown on the console.
    """

    def __init__(self, log_path: str, console: Optional[TextIO] = None,
                 keys: Sequence[str] = PROGRESS_KEYS) -> None:
        self.log_path = log_path
        self.console = console if console is not None else sys.stdout
        self.keys = keys
        self.records: list[StageRecord] = []
        self._log = open(log_path, 'w', encoding='utf-8')

    def say(self, text: str) -> None:
        """A line for the console and the log."""
        self.console.write(text + '\n')
        self.console.flush()
        self._log.write(text + '\n')
        self._log.flush()

    @contextlib.contextmanager
    def stage(self, name: str, command: Optional[str] = None
              ) -> Iterator[None]:
        """Runs the body as stage ``name``; ``command`` is the equivalent
        tool command. A failing stage is named with the log before the
        exception propagates."""
        self.say(f'\n=== {name}' + (f'\n    $ {command}' if command
                                      else ''))
        tee = _Tee(self._log, self.console, self.keys)
        start = (time.perf_counter(), time.process_time(), _children_cpu(),
                 _load())
        try:
            with contextlib.redirect_stdout(tee), \
                    contextlib.redirect_stderr(tee):
                yield
        except BaseException:
            self._log.flush()
            self.console.write(f'stage "{name}" did not finish; its output '
                               f'is in {self.log_path}\n')
            raise
        finally:
            self._log.flush()
        record = StageRecord(
            name=name, wall=time.perf_counter() - start[0],
            cpu=time.process_time() - start[1],
            children_cpu=_children_cpu() - start[2], load_start=start[3],
            load_end=_load(), command=command)
        self.records.append(record)
        self.say(f'    ({record.wall:.1f} s wall, {record.cpu:.1f} s CPU, '
                 f'load {record.load_start:.1f} -> {record.load_end:.1f})')

    def close(self) -> None:
        """Closes the log file."""
        self._log.close()
