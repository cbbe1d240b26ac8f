"""A byte stream cut into chunks of whole lines, for the column-wise readers.

A file is read in large blocks; a pipe (stdin) is read as its bytes arrive, and when the writer pauses
the complete lines read so far go out as a (smaller) chunk, so output keeps up with input that trickles
in (``tail -f log.csv | lrp explain model.yaml -``) instead of waiting for a full batch.
"""

from __future__ import annotations

import io
import os
import select
import stat
from typing import IO, Iterator

import numpy as np

BLOCK = 1 << 20
PAUSE_S = 0.05  # how long a pipe may stay silent before the complete lines read so far are explained


class Prefixed(io.RawIOBase):
    """``prefix`` and then the rest of ``read(n)``'s bytes, as one binary stream."""

    def __init__(self, prefix: bytes, read):
        self.prefix, self.read_more = memoryview(prefix), read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if len(self.prefix):
            n = min(len(buffer), len(self.prefix))
            buffer[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        data = self.read_more(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class LineChunks:
    """The bytes of ``raw`` in chunks of whole lines; reads nothing but through itself.

    A pipe is read with ``os.read`` on its descriptor (what has arrived, never waiting for a full
    block), so :meth:`readline` and :meth:`chunks` see every byte; ``pending`` holds what was read beyond
    the last chunk, so a reader that takes over the rest (:meth:`rest`) starts with it."""

    def __init__(self, raw: IO[bytes]):
        self.pending = b""
        try:
            fd = raw.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            fd = None
        self.fd = fd if fd is not None and _is_pipe(fd) else None
        self.read = (lambda n: os.read(self.fd, n)) if self.fd is not None else raw.read

    def _quiet(self) -> bool:
        """A pipe whose writer has sent nothing for PAUSE_S."""
        try:
            ready, _, _ = select.select([self.fd], [], [], PAUSE_S)
        except (OSError, ValueError):
            return False
        return not ready

    def readline(self) -> bytes:
        """The first line (with its newline), for the header."""
        while b"\n" not in self.pending:
            more = self.read(1 << 16)
            if not more:
                line, self.pending = self.pending, b""
                return line
            self.pending += more
        cut = self.pending.index(b"\n") + 1
        line, self.pending = self.pending[:cut], self.pending[cut:]
        return line

    def chunks(self, lines: int) -> Iterator[bytes]:
        """Chunks of ``lines`` lines; fewer at the end, or from a pipe whose writer pauses."""
        while True:
            ended = False
            while self.pending.count(b"\n") < lines:
                if self.fd is not None and b"\n" in self.pending and self._quiet():
                    break  # the writer pauses: explain the complete lines we have
                more = self.read(BLOCK)
                if not more:
                    ended = True
                    break
                self.pending += more
            if not self.pending:
                return
            ends = np.flatnonzero(np.frombuffer(self.pending, dtype=np.uint8) == 10)
            if len(ends) >= lines:
                cut = int(ends[lines - 1]) + 1
            elif ended or not len(ends):
                cut = len(self.pending)
            else:
                cut = int(ends[-1]) + 1
            chunk, self.pending = self.pending[:cut], self.pending[cut:]
            yield chunk

    def rest(self, prefix: bytes = b"") -> io.TextIOWrapper:
        """``prefix``, what is pending and the rest of the stream, as text (for the careful reader)."""
        data, self.pending = prefix + self.pending, b""
        return io.TextIOWrapper(io.BufferedReader(Prefixed(data, self.read)), encoding="utf-8", errors="surrogateescape", newline="")
