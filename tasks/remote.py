"""SSH to hosts: connections, host keys, commands as root, atomic file writes, fan-out.

The only module besides the task modules that touches the network. Every failure leaves
here as a ``HostError`` that names the host and the fix.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import logging
import os
import shlex
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paramiko
from fabric import Config, Connection
from invoke.runners import Result

from .addresses import SshTarget
from .errors import HostError, InputError, RegistryToolError, StateError
from .localfiles import check_regular_file

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 32
#: How long a remote script may stay silent before the host counts as hung (a
#: stopped daemon, a FIFO where a file should be). Image loads pass their own.
DEFAULT_SCRIPT_TIMEOUT = 120.0
#: The first line every script prints: proof that it ran at all, as root.
STARTED = "@@started"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

T = TypeVar("T")


# Host keys ----------------------------------------------------------------------------


class KnownHosts:
    """OpenSSH's ``accept-new``: remember a new host's key, refuse a changed one.

    Paramiko's own policies either accept every key without saving it (what Fabric
    uses) or rewrite the whole file from one connection's view, which loses entries when
    many connections run at once. Here new keys are appended under a lock.
    """

    def __init__(self, path: Path, strict: bool = False) -> None:
        self.path = path
        self.strict = strict
        self._lock = threading.Lock()
        self._entries: list[paramiko.hostkeys.HostKeyEntry] | None = None

    def prepare(self, connection: Connection) -> None:
        """Give ``connection`` the known keys and our policy for new ones."""
        keys = connection.client.get_host_keys()
        for entry in self._load():
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)
        connection.client.set_missing_host_key_policy(_Policy(self))

    def _load(self) -> list[paramiko.hostkeys.HostKeyEntry]:
        """Read the file once per run. Lines Paramiko cannot use (OpenSSH's
        @cert-authority and @revoked markers, unknown key types) are skipped rather
        than failing every host."""
        with self._lock:
            if self._entries is not None:
                return self._entries
            # ~/.ssh is made as OpenSSH would; a folder named in the config must be
            # there already.
            default = Path(os.path.expanduser(DEFAULT_KNOWN_HOSTS))
            check_regular_file(self.path, "fleet.known_hosts", 64 * 1024 * 1024)
            try:
                if self.path == default:
                    self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.path.touch(mode=0o600, exist_ok=True)
                lines = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise StateError(
                    f"{self.path}: cannot use it as known_hosts ({exc.strerror}); "
                    "set fleet.known_hosts to a file"
                ) from None
            entries = []
            for line in lines.splitlines():
                if not line.strip() or line.lstrip().startswith(("#", "@")):
                    continue
                try:
                    entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
                except (paramiko.hostkeys.InvalidHostKey, ValueError, IndexError):
                    entry = None
                if entry is not None and entry.key is not None:
                    entries.append(entry)
            self._entries = entries
            return entries

    def remember(self, hostname: str, key: paramiko.PKey) -> None:
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with self._lock, open(self.path, "a", encoding="ascii") as stream:
            stream.write(line)


class UnknownHostKey(paramiko.SSHException):
    """A host's key is not in known_hosts and strict checking is on."""


class _Policy(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: KnownHosts) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if self.known_hosts.strict:
            raise UnknownHostKey(hostname)
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.remember(hostname, key)
        log.debug("%s: remembered its %s host key", hostname, key.get_name())


# Connections and commands -------------------------------------------------------------


@dataclass
class Fleet:
    """How this run reaches hosts: Fabric's config plus our host-key policy."""

    config: Config
    known_hosts: KnownHosts
    workers: int = DEFAULT_WORKERS

    @classmethod
    def from_config(cls, config: Config) -> Fleet:
        """Read our settings (the ``fleet`` section) from Fabric's config."""
        settings: Any = config.get("fleet", {}) or {}
        path = Path(
            os.path.expanduser(settings.get("known_hosts") or DEFAULT_KNOWN_HOSTS)
        )
        strict = config_flag(
            settings.get("strict_host_keys", False), "strict_host_keys"
        )
        workers = settings.get("workers")
        workers = (
            DEFAULT_WORKERS
            if workers is None
            else positive_int(workers, "fleet.workers in the config", 1000)
        )
        check_connect_timeout(config)
        return cls(config=config, known_hosts=KnownHosts(path, strict), workers=workers)

    def connect(self, target: SshTarget | str) -> Connection:
        """A (lazily opened) connection to ``target`` with our host-key policy."""
        if isinstance(target, str):
            connection = Connection(target, config=self.config)
        else:
            connection = Connection(
                target.host, user=target.user, port=target.port, config=self.config
            )
        self.known_hosts.prepare(connection)
        return connection


def check_connect_timeout(config: Config) -> None:
    """Refuse a connect timeout Paramiko would fail on with a traceback, per host."""
    timeouts: Any = config.get("timeouts", {}) or {}
    value = timeouts.get("connect")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InputError(
            f"timeouts.connect in the config: expected seconds greater than 0, got "
            f"{value!r}; fix fabric.yaml (or fab -f FILE)"
        )


def config_flag(value: object, key: str) -> bool:
    """A yes/no setting, also when written as a string in YAML."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0", ""):
        return False
    raise InputError(f"fleet.{key}: expected true or false, got {value!r}")


def positive_int(value: object, option: str, highest: int = 10_000) -> int:
    """A whole number from 1 to ``highest``, from an option or a config value."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= highest:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise InputError(f"{option} {shown}: give a whole number from 1 to {highest}")
    return int(text)


def host_label(connection: Connection) -> str:
    """How we name a host in messages: ``user@host[:port]`` as the user wrote it."""
    port = f":{connection.port}" if connection.port != 22 else ""
    return f"{connection.user}@{connection.host}{port}"


@dataclass
class CommandResult:
    """What a remote command printed and how it ended."""

    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


def run_as_root(
    connection: Connection,
    script: str,
    *,
    what: str,
    timeout: float = DEFAULT_SCRIPT_TIMEOUT,
) -> CommandResult:
    """Run a POSIX shell ``script`` as root and return its result (failures included).

    The script travels on standard input, never on a command line, so secrets in it
    don't show in the remote process list. Non-root users go through sudo: ``sudo -n``
    without a password, Fabric's sudo when --prompt-for-sudo-password gave one.
    """
    label = host_label(connection)
    log.debug("%s: running %s", label, what)
    password = connection.config.sudo.password
    script = f"echo {STARTED}\n{script}"
    try:
        # Connecting apart from running: a silent firewall is a connect timeout,
        # not a script that hung.
        connection.open()
    except Exception as exc:  # noqa: BLE001 - every transport failure becomes one line
        raise HostError(label, describe_ssh_failure(exc, connection)) from None
    try:
        if connection.user == "root":
            result = _run(connection, "sh -s", script, timeout)
        elif password is None:
            result = _run(connection, "sudo -n sh -s", script, timeout)
        else:
            result = _sudo_with_password(connection, script, timeout)
    except RegistryToolError:
        raise
    except TimeoutError:
        raise HostError(
            label,
            f"{what} got no answer for {timeout:.0f} s; is docker (or the disk) hung "
            "on the host?",
        ) from None
    except Exception as exc:  # noqa: BLE001 - every transport failure becomes one line
        raise HostError(label, describe_ssh_failure(exc, connection)) from None
    _raise_for_sudo(result, connection)
    first, _, rest = result.stdout.partition("\n")
    if first.strip() != STARTED:
        # A login shell such as nologin, or a profile that fails, ran instead.
        said = failure_line(result)
        raise HostError(
            label,
            f"commands do not run as {connection.user} here ({said}); check the "
            "user's login shell and sudo rights, or connect as root",
        )
    return CommandResult(rest, result.stderr, result.exited)


def _run(
    connection: Connection, command: str, script: str, timeout: float | None
) -> CommandResult:
    # Paramiko directly: Invoke feeds a stdin that is not a terminal one byte per
    # 10 ms, which makes a 3 kB script take 30 seconds.
    connection.open()
    stdin, stdout, stderr = connection.client.exec_command(command, timeout=timeout)
    stdin.channel.sendall(script.encode())
    stdin.channel.shutdown_write()
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return CommandResult(out, err, stdout.channel.recv_exit_status())


def _sudo_with_password(
    connection: Connection, script: str, timeout: float | None
) -> CommandResult:
    # sudo reads the password from standard input, so the script goes in a private
    # temporary file instead, removed as soon as it ran.
    made = connection.run("umask 077 && mktemp", hide=True, in_stream=False)
    path = made.stdout.strip()
    try:
        connection.put(io.BytesIO(script.encode()), remote=path)
        # in_stream=False: our own stdin plays no part; Fabric still answers the
        # password prompt on the remote side.
        result = connection.sudo(
            f"sh {shlex.quote(path)}",
            hide=True,
            warn=True,
            timeout=timeout,
            in_stream=False,
        )
        return CommandResult(result.stdout, result.stderr, result.exited)
    finally:
        connection.run(
            f"rm -f {shlex.quote(path)}", hide=True, warn=True, in_stream=False
        )


def _raise_for_sudo(result: CommandResult, connection: Connection) -> None:
    if result.ok or not result.stderr.lstrip().startswith("sudo:"):
        return
    label = host_label(connection)
    stderr = result.stderr.strip().splitlines()[-1]
    if "password is required" in stderr:
        raise HostError(
            label,
            f"user {connection.user} needs a password for sudo; run again with "
            "--prompt-for-sudo-password, or connect as root",
        )
    if "not in the sudoers" in stderr or "not allowed" in stderr:
        raise HostError(
            label,
            f"user {connection.user} may not use sudo here; grant it sudo rights or "
            "connect as root",
        )
    if "incorrect password" in stderr:
        raise HostError(label, "the sudo password was refused; run again and retype it")
    raise HostError(label, f"sudo failed: {stderr}")


def describe_ssh_failure(exc: BaseException, connection: Connection) -> str:
    """One line that says why SSH to the host failed and what to do."""
    port = connection.port
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"its SSH host key changed since it was first seen; if the host was "
            f"reinstalled, remove the old key with: ssh-keygen -R {exc.hostname}, "
            "otherwise investigate before connecting"
        )
    if isinstance(exc, UnknownHostKey):
        return (
            "its SSH host key is unknown and strict host key checking is on; add it to "
            "known_hosts first (ssh-keyscan), after checking its fingerprint"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return (
            f"SSH login as {connection.user} was refused; check the user name and the "
            "key (fab -i KEY) and that the key is in the host's authorized_keys"
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errors = {getattr(e, "errno", None) for e in exc.errors.values()}
        if errno.ECONNREFUSED in errors:
            return f"connection refused on port {port}; is sshd running there?"
        if errno.EHOSTUNREACH in errors or errno.ENETUNREACH in errors:
            return "no route to host; check the address and the network"
        return f"cannot connect to port {port}: {exc}"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return (
            f"cannot read the SSH key {exc.filename}: no such file; fix fab -i or "
            "connect_kwargs.key_filename in fabric.yaml"
        )
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name; check the spelling or use its IP address"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return (
            f"timed out connecting to port {port}; check the address, the port and any "
            "firewall"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot connect to port {port}: {exc.strerror}"
    if isinstance(exc, paramiko.SSHException):
        if "No existing session" in str(exc) or "Error reading SSH" in str(exc):
            return (
                f"the SSH server on port {port} closed the connection; is sshd running "
                "and does it accept this key?"
            )
        return f"SSH failed: {exc}"
    return f"unexpected {type(exc).__name__}: {exc}"


#: Lines that say where to read more, not what went wrong.
_NOISE = ("Run 'docker", "See 'docker")


#: The fix for what a host's file system says, by the words it says it in.
FILE_SYSTEM_FIXES = (
    ("Read-only file system", "remount it read-write, then run again"),
    ("No space left on device", "free some space there, then run again"),
    ("Disk quota exceeded", "free some space there, then run again"),
    ("Not a directory", "a file stands where a folder must be: move it away"),
    ("File exists", "a file stands where a folder must be: move it away"),
)


def failure_line(result: CommandResult | Result) -> str:
    """The last meaningful line a failed remote command printed, with its cause and,
    for a file system's refusal, the fix.

    When our own "could not write" line ends the output, the tool's message before it
    (such as "No space left on device") is the reason, so both are given.
    """
    line = _last_line(result)
    for words, fix in FILE_SYSTEM_FIXES:
        if words in line:
            return f"{line}; {fix}"
    return line


def _last_line(result: CommandResult | Result) -> str:
    for stream in (result.stderr, result.stdout):
        lines = [
            line.strip()
            for line in stream.splitlines()
            if line.strip() and not line.strip().startswith(_NOISE)
        ]
        if not lines:
            continue
        if lines[-1].startswith("could not write") and len(lines) > 1:
            return f"{lines[-1]}: {lines[-2]}"
        return lines[-1][:300]
    return f"exit code {result.exited}"


# Files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """A file we want on a host, exactly: content and permission bits."""

    path: str
    content: bytes
    mode: int = 0o644

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


#: Shell functions every file script starts with. Each prints one line per path:
#: ``unchanged``, ``changed``, ``would-change``, ``removed``, ``would-remove`` or
#: ``kept`` (and ``saved`` or ``restored`` for a host's own file kept aside as
#: ``PATH.orig``), and leaves that word in ``$last``; ``show_file`` prints a config
#: file for the caller to edit. A new file is written next to its target and renamed
#: over it, so an interrupted run never leaves half a file; its content is checked
#: against its digest before the rename.
FILE_FUNCTIONS = r"""
set -u
umask 022
last=''
not_a_file() {
  if [ -e "$1" ] && [ ! -f "$1" ] || [ -L "$1" ]; then
    echo "could not write $1: it is not a regular file (a folder, link or pipe?);" \
      "remove it and run again" >&2
    return 0
  fi
  return 1
}
put_file() {
  p=$1 m=$2 want=$3 ours=${4:-}
  if not_a_file "$p"; then cat >/dev/null; return 1; fi
  have=$(sha256sum "$p" 2>/dev/null | cut -c1-64)
  mode=$(stat -c %a "$p" 2>/dev/null)
  if [ "$have" = "$want" ] && [ "$mode" = "$m" ]; then
    cat >/dev/null; last=unchanged; echo "unchanged $p"; return 0
  fi
  # A file there that we never wrote is the host's own: kept aside, not lost.
  # Files we edit rather than own ("-") are not kept aside.
  foreign=''
  if [ -n "$have" ] && [ "$ours" != - ]; then
    case " $want $ours " in *" $have "*) ;; *) foreign=1 ;; esac
  fi
  if [ -n "$foreign" ] && { [ -e "$p.orig" ] || [ -L "$p.orig" ]; }; then
    cat >/dev/null
    echo "could not write $p: it holds a file we did not write, and $p.orig" \
      "(where we would keep it) is taken; move one of them away" >&2
    return 1
  fi
  if [ -n "$DRY_RUN" ]; then
    cat >/dev/null; last=would-change; echo "would-change $p"
    [ -z "$foreign" ] || echo "would-save $p.orig"
    return 0
  fi
  d=$(dirname "$p")
  mkdir -p "$d" || { cat >/dev/null; return 1; }
  t=$(mktemp "$d/.$(basename "$p").XXXXXX") || { cat >/dev/null; return 1; }
  if base64 -d >"$t" && chmod "$m" "$t" && sync "$t" 2>/dev/null \
     && [ "$(sha256sum "$t" | cut -c1-64)" = "$want" ] \
     && { [ -z "$foreign" ] || ln "$p" "$p.orig"; } && mv -f "$t" "$p"; then
    [ -z "$foreign" ] || echo "saved $p.orig"
    last=changed; echo "changed $p"
  else
    rm -f "$t"; echo "could not write $p" >&2; return 1
  fi
}
staged=''
stage_file() {
  p=$1 m=$2 want=$3
  if not_a_file "$p"; then cat >/dev/null; return 1; fi
  have=$(sha256sum "$p" 2>/dev/null | cut -c1-64)
  mode=$(stat -c %a "$p" 2>/dev/null)
  if [ "$have" = "$want" ] && [ "$mode" = "$m" ]; then
    cat >/dev/null; echo "unchanged $p"; return 0
  fi
  if [ -n "$DRY_RUN" ]; then cat >/dev/null; echo "would-change $p"; return 0; fi
  d=$(dirname "$p")
  mkdir -p "$d" || { cat >/dev/null; return 1; }
  t=$(mktemp "$d/.$(basename "$p").XXXXXX") || { cat >/dev/null; return 1; }
  staged="$staged $t|$p"
  if base64 -d >"$t" && chmod "$m" "$t" && sync "$t" 2>/dev/null \
     && [ "$(sha256sum "$t" | cut -c1-64)" = "$want" ]; then
    return 0
  fi
  echo "could not write $p" >&2; return 1
}
commit_staged() {
  for pair in $staged; do
    mv -f "${pair%%|*}" "${pair#*|}" && echo "changed ${pair#*|}" || return 1
  done
  staged=''
}
abort_staged() {
  for pair in $staged; do rm -f "${pair%%|*}"; done
  staged=''
}
restore_orig() {
  # What trust-clients kept aside goes back where it was.
  [ -f "$1.orig" ] && [ ! -L "$1.orig" ] || return 1
  if [ -n "$DRY_RUN" ]; then echo "would-restore $1"; return 0; fi
  mv -f "$1.orig" "$1" && echo "restored $1"
}
remove_file() {
  p=$1 wants=$2
  last=unchanged
  if [ ! -e "$p" ]; then
    restore_orig "$p" && last=removed
    return 0
  fi
  have=$(sha256sum "$p" 2>/dev/null | cut -c1-64)
  case " $wants " in
    *" $have "*) ;;
    *)
      echo "kept $p"
      [ ! -f "$p.orig" ] || echo "kept-orig $p.orig"
      return 0 ;;
  esac
  if [ -n "$DRY_RUN" ]; then
    last=would-remove; echo "would-remove $p"
    restore_orig "$p"
    return 0
  fi
  rm -f "$p" || return 1
  last=removed; echo "removed $p"
  restore_orig "$p" && return 0
  rmdir "$(dirname "$p")" 2>/dev/null
  return 0
}
show_file() {
  if [ -f "$2" ]; then
    echo "config $1 $(stat -c %a "$2") $(base64 -w0 <"$2")"
  else
    echo "config $1 - -"
  fi
}
"""


def quote_path(path: str) -> str:
    """``path`` quoted for the shell; a leading ``~/`` stays ``$HOME``, which scripts
    run for another user (``render_as_user``) set to that user's home."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def render_put_files(
    files: Iterable[RemoteFile], ours: Sequence[bytes] | None = None
) -> str:
    """Shell lines that make each file exactly so (use after ``FILE_FUNCTIONS``).

    With ``ours`` (what we may have written there before), a file already there that
    holds neither its new content nor any of ``ours`` is the host's own: it is kept
    as ``PATH.orig``, which ``render_remove_files`` puts back. Without, the file is
    simply replaced (a config we edit, a file only we write).
    """
    digests = (
        "-"
        if ours is None
        else " ".join(hashlib.sha256(content).hexdigest() for content in ours)
    )
    lines: list[str] = []
    for number, item in enumerate(files):
        encoded = base64.encodebytes(item.content).decode("ascii")
        marker = f"CONTENT_{number}_END"
        lines.append(
            f"put_file {quote_path(item.path)} {item.mode:o} {item.digest} "
            f"'{digests}' <<'{marker}' || exit 1\n{encoded}{marker}"
        )
    return "\n".join(lines) + "\n"


def render_put_together(files: Iterable[RemoteFile]) -> str:
    """Like ``render_put_files``, but all files change or none does.

    Every new file is written and checked beside its target first; only then are they
    renamed into place. A certificate never meets a key it does not belong to.
    """
    lines: list[str] = []
    for number, item in enumerate(files):
        encoded = base64.encodebytes(item.content).decode("ascii")
        marker = f"CONTENT_{number}_END"
        lines.append(
            f"stage_file {quote_path(item.path)} {item.mode:o} {item.digest}"
            f" <<'{marker}' || {{ abort_staged; exit 1; }}\n{encoded}{marker}"
        )
    lines.append("commit_staged || { abort_staged; exit 1; }")
    return "\n".join(lines) + "\n"


def render_remove_files(files: Iterable[RemoteFile], also: Sequence[bytes] = ()) -> str:
    """Shell lines that remove each file if it still holds what we wrote (its own
    content, or any of ``also``)."""
    extra = [hashlib.sha256(content).hexdigest() for content in also]
    lines = []
    for item in files:
        digests = " ".join(dict.fromkeys([item.digest, *extra]))
        lines.append(f"remove_file {quote_path(item.path)} '{digests}' || exit 1\n")
    return "".join(lines)


def render_as_user(user: str, body: str, dry_run: bool, marker: str) -> str:
    """Shell lines that run file-script ``body`` as ``user``, ``$HOME`` their home.

    Writing as the user rather than as root means that a link planted in their home
    cannot turn our write into one somewhere else, and what we create is theirs.
    ``marker`` ends the here-document and must not occur in ``body``.
    """
    assert marker not in body, marker
    name = shlex.quote(user)
    return (
        f"home=$(getent passwd {name} | cut -d: -f6)\n"
        f"( cd / && runuser -u {name} -- /bin/sh -s -- \"$home\" <<'{marker}' )"
        " || exit 1\n"
        f"HOME=$1\n{script_header(dry_run)}{body}{marker}\n"
    )


def script_header(dry_run: bool) -> str:
    return f"DRY_RUN={'1' if dry_run else ''}\n{FILE_FUNCTIONS}"


@dataclass
class FileReport:
    """What a file script said it did, path by path."""

    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)  # the host's own, kept aside
    restored: list[str] = field(default_factory=list)  # put back from .orig
    orig_left: list[str] = field(default_factory=list)  # .orig beside a kept file
    other: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, output: str) -> FileReport:
        report = cls()
        buckets = {
            "changed": report.changed,
            "would-change": report.changed,
            "unchanged": report.unchanged,
            "removed": report.removed,
            "would-remove": report.removed,
            "kept": report.kept,
            "saved": report.saved,
            "would-save": report.saved,
            "restored": report.restored,
            "would-restore": report.restored,
            "kept-orig": report.orig_left,
        }
        for line in output.splitlines():
            word, _, rest = line.partition(" ")
            bucket = buckets.get(word)
            (bucket if bucket is not None else report.other).append(
                rest if bucket is not None else line
            )
        return report


# Many hosts at once -------------------------------------------------------------------


def fan_out(
    items: Sequence[T],
    work: Callable[[T], Any],
    workers: int,
    on_done: Callable[[int, int, Any], None] | None = None,
    on_wait: Callable[[list[T]], None] | None = None,
    wait_seconds: float = 15.0,
) -> list[Any]:
    """Run ``work`` on every item with at most ``workers`` at a time, in input order.

    ``work`` must not raise (it returns its outcome, failures included); ``on_done``
    sees each result as it comes, with the count done so far, for progress lines;
    ``on_wait`` hears which items are still running whenever none has finished for
    ``wait_seconds``, so a slow host is named rather than waited on in silence.
    """
    results: list[Any] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items) or 1))) as pool:
        futures = {pool.submit(work, item): index for index, item in enumerate(items)}
        pending = set(futures)
        done_count = 0
        while pending:
            finished, pending = wait(
                pending, timeout=wait_seconds, return_when=FIRST_COMPLETED
            )
            if not finished and on_wait is not None:
                on_wait(
                    [items[futures[future]] for future in pending if future.running()]
                )
            for future in sorted(finished, key=futures.__getitem__):
                done_count += 1
                index = futures[future]
                results[index] = future.result()
                if on_done is not None:
                    on_done(done_count, len(items), results[index])
    return results
