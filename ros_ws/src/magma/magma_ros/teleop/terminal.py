"""Read single key presses from a terminal without blocking, and always give the terminal back as it was.

Only canonical mode (line buffering) and echo are switched off; signal keys stay on, so Ctrl-C still
interrupts the process (the node then shuts down and this restores the terminal). The settings are
restored on exit from the ``with`` block, on ``close()``, and, as a last resort, at interpreter exit.
"""
from __future__ import annotations

import atexit
import os
import select
import sys
from typing import TextIO

from magma_core.errors import InvalidInputError
from magma_ros.teleop.keyboard import split_keys

READ_CHUNK = 256


class RawTerminal:
    """Key-at-a-time input from `stream` (default stdin), which must be a terminal."""

    def __init__(self, stream: TextIO | int | None = None) -> None:
        import termios  # POSIX only: imported here so the rest of the package works anywhere

        self._termios = termios
        stream = sys.stdin if stream is None else stream
        self.fd = stream if isinstance(stream, int) else stream.fileno()
        if not os.isatty(self.fd):
            raise InvalidInputError("keyboard teleop needs a terminal, but its input is not one: run the teleop node "
                                    "in a terminal of its own (not under a launcher), or use input:=joy / scripted")
        self._saved: list | None = None

    def __enter__(self) -> "RawTerminal":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if self._saved is not None:
            return
        termios = self._termios
        self._saved = termios.tcgetattr(self.fd)
        mode = termios.tcgetattr(self.fd)
        mode[3] &= ~(termios.ICANON | termios.ECHO)  # lflags: no line buffering, no echo; ISIG stays on
        mode[6][termios.VMIN] = 0  # a read returns at once with what is there
        mode[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, mode)
        atexit.register(self.close)

    def close(self) -> None:
        """Restore the terminal settings (idempotent)."""
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        try:
            self._termios.tcsetattr(self.fd, self._termios.TCSADRAIN, saved)
        except self._termios.error:  # the terminal went away (e.g. the window was closed)
            pass
        atexit.unregister(self.close)

    def read_keys(self, timeout_s: float = 0.0) -> list[str]:
        """Key names pressed since the last call (see keyboard.split_keys); waits at most `timeout_s`."""
        if self._saved is None:
            raise InvalidInputError("RawTerminal.read_keys before open()")
        data = b""
        wait = timeout_s
        while select.select([self.fd], [], [], wait)[0]:
            chunk = os.read(self.fd, READ_CHUNK)
            if not chunk:  # end of input
                break
            data += chunk
            wait = 0.0
        return split_keys(data.decode("utf-8", errors="ignore"))
