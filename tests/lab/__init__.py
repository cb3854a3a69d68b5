"""A lab of real hosts on one machine for the registry tasks' end-to-end tests.

Each host is a network namespace on a private bridge with its own sshd, and
optionally its own dockerd, seeing its own /etc and private copies of the other
folders tasks write to.
"""

from .errors import LabCommandError, LabCommandTimeout, LabError
from .host import PRIVATE_DIRS, LabHost, PrivateDir
from .lab import Lab

__all__ = [
    "PRIVATE_DIRS",
    "Lab",
    "LabCommandError",
    "LabCommandTimeout",
    "LabError",
    "LabHost",
    "PrivateDir",
]
