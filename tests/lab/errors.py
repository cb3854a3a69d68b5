"""Errors raised by the lab; each message names the host or path and the way out."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class LabError(Exception):
    """A lab step failed: bad input, a missing tool, or a host that is not up."""


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


class LabCommandError(LabError, subprocess.CalledProcessError):
    """A command on a lab host (or the control machine) exited non-zero.

    It is a CalledProcessError, so callers may keep catching that; the message
    adds the host, stdout and stderr, which the stock class leaves out.
    """

    def __init__(
        self,
        where: str,
        command: str | Sequence[str],
        returncode: int,
        stdout: str | None,
        stderr: str | None,
    ) -> None:
        subprocess.CalledProcessError.__init__(
            self, returncode, command, output=stdout, stderr=stderr
        )
        self.where = where

    def __str__(self) -> str:
        command = self.cmd if isinstance(self.cmd, str) else " ".join(self.cmd)
        return (
            f"{self.where}: command exited {self.returncode}: {command}\n"
            f"--- stdout\n{_tail(self.stdout)}\n--- stderr\n{_tail(self.stderr)}"
        )


class LabCommandTimeout(LabError, subprocess.TimeoutExpired):
    """A command on a lab host ran past its timeout and was killed."""

    def __init__(
        self, where: str, command: str | Sequence[str], timeout: float
    ) -> None:
        subprocess.TimeoutExpired.__init__(self, command, timeout)
        self.where = where

    def __str__(self) -> str:
        command = self.cmd if isinstance(self.cmd, str) else " ".join(self.cmd)
        return f"{self.where}: command timed out after {self.timeout:g}s: {command}"
