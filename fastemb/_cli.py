"""What every command line of the project does alike: bad input is one ``error:`` line and exit
status 2 (no traceback), Ctrl-C exits 130, and SIGTERM is handled like Ctrl-C (exit 143), so the
cleanup that Ctrl-C runs (staging directories, temporary files) also runs when a service manager or
``timeout`` stops the command."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, ImportError)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as an interrupt so that every cleanup handler runs."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(fn: Callable[[], int | None], errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Run ``fn``; map ``errors`` to one ``error:`` line and 2, an interrupt to 130 (SIGTERM: 143)."""
    with sigterm_as_interrupt():
        try:
            return fn() or 0
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            print("terminated" if terminated else "interrupted", file=sys.stderr)
            return 143 if terminated else 130
        except errors as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
