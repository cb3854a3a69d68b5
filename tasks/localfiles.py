"""Files the user names on this machine (inventory, password, known_hosts).

Each is read whole, so only a regular file of a sane size is read at all: a pipe or
a device (``/dev/zero``) would hang the run or fill the memory.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError


def check_regular_file(path: Path, what: str, limit: int) -> None:
    """Refuse, in one line naming ``what``, anything but a regular file up to
    ``limit`` bytes; a missing file is left to the caller to name."""
    if not path.exists():
        return
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder; give the file itself")
    if not path.is_file():
        raise InputError(
            f"{what} {path}: not a regular file (a pipe or a device?); give a file"
        )
    size = path.stat().st_size
    if size > limit:
        raise InputError(
            f"{what} {path}: {size} bytes, more than the {limit} such a file can "
            "have; give the right file"
        )
