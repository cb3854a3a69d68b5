"""The one error hierarchy of the project.

Every failure a user can cause or meet is one of these. Each message is a single line
that names the host, the file or key at fault and the fix; the task boundary turns it
into ``invoke.exceptions.Exit`` so the user sees that line and no traceback.
"""

from __future__ import annotations


class RegistryToolError(Exception):
    """Base class: a failure with a message meant for the user, as it is."""


class InputError(RegistryToolError):
    """Bad options or a bad inventory; raised before any host is contacted."""


class StateError(RegistryToolError):
    """The local state folder (CA, certificates) is missing, damaged or locked."""


class HostError(RegistryToolError):
    """Something failed on one host; the message starts with that host."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.reason = message
