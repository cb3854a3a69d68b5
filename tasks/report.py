"""What tasks tell the user: per-host lines, a recap, one-line errors."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from invoke.exceptions import Exit

from .errors import RegistryToolError

log = logging.getLogger("tasks")

CHANGED = "changed"
UNCHANGED = "unchanged"
WOULD_CHANGE = "would change"
FAILED = "failed"
OK = "ok"  # a check that passed

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Outcome:
    """What one task did on one host."""

    host: str
    status: str
    details: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == FAILED


def setup_logging() -> None:
    """Send our messages to standard output; debug lines when Fabric's --debug is on."""
    if log.handlers:
        return
    # `fab ... | head` closes the pipe early: that is not an error to report.
    logging.raiseExceptions = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    log.setLevel(logging.DEBUG if debug else logging.INFO)


def send_log_to_stderr() -> None:
    """For output meant for scripts (--json): standard output holds only that."""
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)


def user_errors(function: F) -> F:
    """Turn our errors into a one-line message and exit code 1, without a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return function(*args, **kwargs)
        except RegistryToolError as exc:
            raise Exit(f"error: {one_line(str(exc))}", code=1) from None
        except KeyboardInterrupt:
            raise Exit(
                "interrupted; run the task again to complete the work", code=130
            ) from None

    return wrapper  # type: ignore[return-value]


def one_line(text: str) -> str:
    """``text`` as one printable line: a newline or a terminal escape that came
    with a value (a file name, a key, a remote message) is shown, not obeyed."""
    return "".join(
        char if char.isprintable() else repr(char)[1:-1] for char in text.strip()
    )


def hosts_text(count: int, noun: str = "host") -> str:
    """``1 client``, ``3 clients``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def size_text(count: int) -> str:
    """A byte count for people: ``512 B``, ``12.3 kB``, ``4.5 MB``, ``1.2 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def log_outcome(
    outcome: Outcome, done: int | None = None, total: int | None = None
) -> None:
    """One line per host: status, then what changed or why it failed."""
    counter = f"[{done}/{total}] " if done is not None and total and total > 1 else ""
    details = "; ".join(outcome.details)
    line = one_line(
        f"{counter}{outcome.host}: {outcome.status}"
        + (f": {details}" if details else "")
    )
    if outcome.failed:
        log.error(line)
    else:
        log.info(line)


def recap(outcomes: Sequence[Outcome]) -> str:
    """``3 hosts: 1 changed, 1 unchanged, 1 failed``."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    order = (CHANGED, WOULD_CHANGE, UNCHANGED, OK, FAILED)
    parts = [f"{counts[status]} {status}" for status in order if counts.get(status)]
    return f"{hosts_text(len(outcomes))}: {', '.join(parts)}"


def finish(
    outcomes: Sequence[Outcome],
    next_step: str | None = None,
    fix: str = "fix what is said above and run the task again (hosts already done "
    "report unchanged)",
) -> None:
    """Print the recap; exit 1 naming the failed hosts, after all others were done."""
    log.info("recap: %s", recap(outcomes))
    failed = [outcome.host for outcome in outcomes if outcome.failed]
    if failed:
        raise Exit(f"error: failed on {', '.join(failed)}; {fix}", code=1)
    if next_step:
        log.info("next: %s", next_step)
