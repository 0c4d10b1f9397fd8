"""The one exception family of rc_adapter.

Every error a user can fix -- a bad argument or config, an unknown task, a
damaged or foreign task bank, an unsafe checkpoint, an unreadable label --
is an :class:`RCError`. The command-line tools catch exactly this family and
print its message as one paragraph (exit status 2); anything else is a bug
and keeps its traceback.

Each subclass also derives from the built-in exception Python code would
expect (``ValueError``, ``KeyError``), so ``except ValueError`` in existing
user code keeps working.
"""

__all__ = ['RCError', 'RCConfigError', 'UnknownTaskError', 'BankError',
           'CheckpointError', 'ConversionError', 'AnnotationError',
           'ResourceError']


class RCError(Exception):
    """Base class of every error a user of rc_adapter can fix."""


class RCConfigError(RCError, ValueError):
    """An invalid argument or configuration value (names the key)."""


class UnknownTaskError(RCError, KeyError):
    """A task name that the model, config or bank does not hold."""

    def __str__(self) -> str:
        # KeyError would quote the message like a key.
        return str(self.args[0]) if self.args else ''


class BankError(RCError, ValueError):
    """A task bank is missing, malformed, inconsistent or misused."""


class CheckpointError(RCError, ValueError):
    """A checkpoint file is missing, unreadable or unsafe to load."""


class ConversionError(RCError, ValueError):
    """A checkpoint cannot be converted into a task bank."""


class AnnotationError(RCError, ValueError):
    """A label file is unreadable, malformed or of the wrong size."""


class ResourceError(RCError, OSError):
    """The machine refused: permission, disk space, memory (names what)."""
