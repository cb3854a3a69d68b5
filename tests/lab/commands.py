"""Run programs on the control machine (the root namespace)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

from .errors import LabCommandError, LabCommandTimeout

logger = logging.getLogger("tests.lab")

# Lab commands get a fixed environment: a caller's DOCKER_HOST or SSH_AUTH_SOCK
# must not leak into a host and make a test pass or fail for the wrong reason.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLEAN_ENV: Mapping[str, str] = {
    "PATH": SYSTEM_PATH,
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "USER": "root",
    "LOGNAME": "root",
}


def run_local(
    argv: Sequence[str],
    *,
    where: str = "control machine",
    check: bool = True,
    timeout: float = 60,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv, capture text output, and raise an error naming `where` on failure."""
    logger.debug("%s: %s", where, shlex.join(argv))
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            env=dict(env if env is not None else os.environ),
        )
    except subprocess.TimeoutExpired as error:
        raise LabCommandTimeout(where, list(argv), timeout) from error
    if check and result.returncode != 0:
        raise LabCommandError(
            where, list(argv), result.returncode, result.stdout, result.stderr
        )
    return result
