"""The registry's data: garbage collection, backup to this machine, restore from it.

The registry must not serve writes while its blobs are collected or copied, so each of
these stops the container for the duration of the work on the host (not of the
transfer) and starts it again whatever happened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import shlex
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from fabric import Connection, task
from invoke.context import Context

from .errors import HostError, InputError
from .options import DEFAULT_PKI_DIR, HELP_INVENTORY, HELP_PKI_DIR
from .pki import StateFolder
from .registry import (
    MANAGED_LABEL,
    RegistrySpec,
    certify_and_deploy,
    live_spec,
    open_registry,
    wait_for_tls,
    warn_expiry_of,
)
from .remote import failure_line, host_label, run_as_root
from .report import (
    CHANGED,
    UNCHANGED,
    WOULD_CHANGE,
    Outcome,
    finish,
    log,
    log_outcome,
    size_text,
    user_errors,
)


def data_root(spec: RegistrySpec) -> str:
    """Shell that sets ``$root`` to the registry's data folder on the host."""
    if spec.data.startswith("/"):
        return f"root={shlex.quote(spec.data)}"
    return (
        "root=$(docker volume inspect --format '{{.Mountpoint}}' "
        f"{shlex.quote(spec.data)} 2>/dev/null)"
    )


def while_stopped(spec: RegistrySpec, work: str, stop: bool = True) -> str:
    """Run ``work`` with the registry container stopped, and start it again after.

    The container must be ours: a foreign one with the same name is left alone. With
    ``stop`` false it only checks that, for work that merely reads.
    """
    name = shlex.quote(spec.container)
    if not stop:
        return f"""
label=$(docker container inspect --format \\
  '{{{{index .Config.Labels "{MANAGED_LABEL}"}}}}' {name} 2>/dev/null)
[ "$label" = true ] || {{ echo "no registry container made by this tool" >&2; exit 3; }}
{work}
"""
    lock = shlex.quote(f"/run/ip-registry-{spec.container}.lock")
    return f"""
label=$(docker container inspect --format \\
  '{{{{index .Config.Labels "{MANAGED_LABEL}"}}}}' {name} 2>/dev/null)
[ "$label" = true ] || {{ echo "no registry container made by this tool" >&2; exit 3; }}
exec 9>{lock}
if ! flock -n 9; then
  echo "another backup, restore or garbage-collect is running on this registry" >&2
  exit 6
fi
running=$(docker container inspect --format '{{{{.State.Running}}}}' {name})
echo "was-running $running"
[ "$running" = true ] && docker stop {name} >/dev/null
(
{work}
)
rc=$?
[ "$running" = true ] && docker start {name} >/dev/null
exit $rc
"""


def render_garbage_collect(spec: RegistrySpec, dry_run: bool, untagged: bool) -> str:
    options = " ".join(
        option
        for option, wanted in (("--dry-run", dry_run), ("--delete-untagged", untagged))
        if wanted
    )
    work = f"""
{data_root(spec)}
before=$(du -sb "$root" | cut -f1)
docker run --rm --volume {shlex.quote(spec.data)}:/var/lib/registry \\
  {shlex.quote(spec.image)} garbage-collect {options} \\
  /etc/docker/registry/config.yml >/tmp/registry-gc.$$ 2>&1
rc=$?
log=/tmp/registry-gc.$$
grep 'blobs marked' $log | tail -n 1 | sed 's/^/summary /'
echo "deleted $(grep -c 'Deleting blob' $log)"
[ $rc -eq 0 ] || {{ tail -n 5 $log >&2; rm -f $log; exit $rc; }}
rm -f $log
echo "freed $((before - $(du -sb "$root" | cut -f1)))"
"""
    return while_stopped(spec, work, stop=not dry_run)


def gc_result(output: str, dry_run: bool) -> tuple[str, list[str]]:
    """The status and details of a collection, from what its script printed."""
    summary, freed, deleted = "", 0, 0
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "summary":
            summary = rest.strip()
        elif word == "freed" and rest.strip().lstrip("-").isdigit():
            freed = int(rest)
        elif word == "deleted" and rest.strip().isdigit():
            deleted = int(rest)
    details = [summary] if summary else []
    if dry_run:
        found = re.search(r"(\d+) blobs and (\d+) manifests eligible", summary)
        eligible = found is not None and any(int(n) for n in found.groups())
        return (WOULD_CHANGE if eligible else UNCHANGED), details
    details.append(f"deleted {deleted} blobs, freed {size_text(max(freed, 0))}")
    return (CHANGED if deleted or freed > 0 else UNCHANGED), details


GC_HELP = {
    "inventory": HELP_INVENTORY,
    "dry_run": "Only show what would be deleted; the registry keeps running.",
    "delete_untagged": "Also delete manifests that no tag points to.",
}


@task(help=GC_HELP, auto_shortflags=False)
@user_errors
def garbage_collect(
    c: Context,
    inventory: str | None = None,
    dry_run: bool = False,
    delete_untagged: bool = False,
) -> None:
    """Delete blobs no manifest uses, with the registry stopped meanwhile.

    Runs the registry's own garbage-collect in a one-off container of the same image
    on the same data. The registry is stopped during the collection so no push can
    race it, and started again afterwards, also after a failure. --dry-run lists what
    would go and keeps the registry running.
    """
    spec, connection = open_registry(c, inventory)
    spec = live_spec(connection, spec)
    host = host_label(connection)
    script = render_garbage_collect(spec, dry_run, delete_untagged)
    result = run_as_root(connection, script, what="garbage-collect")
    if not result.ok:
        raise HostError(host, f"garbage collection failed: {failure_line(result)}")
    outcome = Outcome(host, *gc_result(result.stdout, dry_run))
    log_outcome(outcome)
    warn_expiry_of(StateFolder(Path(DEFAULT_PKI_DIR)))
    finish([outcome])


# Backup and restore -----------------------------------------------------------------


def render_backup(spec: RegistrySpec, archive: str) -> str:
    """Pack the data and the users file into ``archive`` on the host."""
    work = f"""
{data_root(spec)}
[ -d "$root" ] || {{ echo "no registry data at $root" >&2; exit 4; }}
set -- -C "$root" --exclude='./.before-restore-*' --exclude='./.restore-*' \\
  --transform 's,^\\.$,data,;s,^\\./,data/,' .
if [ -f {shlex.quote(spec.htpasswd_path)} ]; then
  set -- "$@" -C {shlex.quote(spec.remote_dir)} auth/htpasswd
fi
tar --create --gzip --file {shlex.quote(archive)} "$@" || exit 1
"""
    return while_stopped(spec, work)


def file_digest(path: Path) -> str:
    """The SHA-256 of a local file, read in blocks (backups can be large)."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def check_backup_archive(path: Path, option: str = "--archive") -> None:
    """Refuse, before anything is uploaded, an archive that backup did not make.

    A backup holds folders and regular files under ``data/`` and files directly in
    ``auth/``, nothing else. A link, a device, an absolute path or ``..`` could
    make the restore write, or move, files outside the registry's folders.
    """

    def refuse(reason: str) -> InputError:
        return InputError(
            f"{option} {path}: {reason}; restore only takes a .tar.gz made by "
            "fab backup"
        )

    found_data = False
    try:
        with tarfile.open(path, mode="r:gz") as archive:
            for member in archive:
                name = member.name.removeprefix("./").rstrip("/")
                problem = member_problem(member, name)
                if problem is not None:
                    raise refuse(problem)
                # "." alone: an older backup of an empty registry.
                found_data |= name.split("/")[0] in ("data", "", ".")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise refuse(f"cannot read it as a .tar.gz ({exc})") from None
    if not found_data:
        raise refuse("it holds no data/ folder")


def member_problem(member: tarfile.TarInfo, name: str) -> str | None:
    """Why a backup would never hold this archive member; None if it could."""
    if name in ("", "."):
        return None if member.isdir() else "its top entry is not a folder"
    parts = name.split("/")
    shown = name if name.isprintable() else repr(name)
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    if name.startswith("/") or ".." in parts:
        return f"{shown} lies outside the archive"
    if not (member.isfile() or member.isdir()):
        return f"{shown} is a link or a special file"
    if len(name.encode()) > 4000 or any(len(part.encode()) > 255 for part in parts):
        return f"{shown} has a name too long for a file system"
    if name in ("data", "data/docker", "auth") and not member.isdir():
        return f"{shown} is a file where backup puts a folder"
    if parts[0] == "data":
        return None
    if parts[0] == "auth" and (
        len(parts) == 1 or (len(parts) == 2 and member.isfile())
    ):
        return None
    return f"{shown} is neither registry data nor users"


def render_fingerprint(spec: RegistrySpec) -> str:
    """Shell function ``fingerprint``: the data's file names, sizes and times and the
    users file, as one digest; use where ``$root`` is set."""
    auth = shlex.quote(spec.htpasswd_path)
    return (
        "fingerprint() {\n"
        "  { (cd \"$root\" && find docker -printf '%P %s %T@\\n' 2>/dev/null | sort)\n"
        f"    cat {auth} 2>/dev/null; }} | sha256sum | cut -c1-64\n"
        "}\n"
    )


def render_restore_state(spec: RegistrySpec) -> str:
    """Print what the last restore recorded and what the data is now, or nothing."""
    return f"""
{data_root(spec)}
{render_fingerprint(spec)}
[ -n "$root" ] && [ -f "$root/.restore-state" ] || exit 0
echo "$(cat "$root/.restore-state") $(fingerprint)"
"""


def restored_already(output: str, archive_sha: str) -> bool:
    """Tell whether the data is as restoring the archive ``archive_sha`` left it."""
    words = output.split()
    return len(words) == 3 and words[0] == archive_sha and words[1] == words[2]


def render_restore(
    spec: RegistrySpec, archive: str, stamp: str, archive_sha: str = "-"
) -> str:
    """Unpack ``archive``; the data it replaces is moved aside, never deleted.

    ``archive_sha`` is recorded with the data it leaves, in ``.restore-state``.
    """
    aside = f".before-restore-{stamp}"
    work = f"""
{data_root(spec)}
{render_fingerprint(spec)}
[ -n "$root" ] || {{ echo "no registry data volume {spec.data}" >&2; exit 4; }}
mkdir -p "$root" || exit 1
staging=$(mktemp -d "$root/.restore-XXXXXX") || exit 1
if ! said=$(tar --extract --gzip --file {shlex.quote(archive)} -C "$staging" 2>&1); then
  rm -rf "$staging"; printf '%s\\n' "$said" | head -n 1 >&2; exit 5
fi
[ -e "$staging/data" ] || mkdir "$staging/data"  # a backup of an empty registry
# Checked here as well: only folders and files, so nothing below can be led away.
if [ ! -d "$staging/data" ] || [ -L "$staging/data" ] \
   || [ -n "$(find "$staging" ! -type f ! -type d | head -n 1)" ]; then
  rm -rf "$staging"; echo "not a backup of ours (links or special files)" >&2; exit 5
fi
if [ -e "$root/docker" ]; then
  mkdir -p "$root/{aside}" && mv "$root/docker" "$root/{aside}/" || exit 1
  echo "kept $root/{aside}"
fi
if [ -d "$staging/data/docker" ]; then
  mv "$staging/data/docker" "$root/docker" || exit 1
fi
if [ -f "$staging/auth/htpasswd" ]; then
  mkdir -p {shlex.quote(spec.auth_dir)}
  old={shlex.quote(spec.htpasswd_path)}
  if [ -f "$old" ] && ! cmp -s "$staging/auth/htpasswd" "$old"; then
    cp -p "$old" "$old{aside}" && echo "kept the previous users as $old{aside}"
  fi
  mv -f "$staging/auth/htpasswd" "$old" && echo "restored users"
fi
rm -rf "$staging"
# What this archive left, for a second restore of it to find nothing to do.
echo "{archive_sha} $(fingerprint)" >"$root/.restore-state"
echo restored
"""
    return while_stopped(spec, work)


def progress_printer(host: str, what: str) -> Callable[[int, int], None]:
    """A Paramiko transfer callback that logs every tenth of the way."""
    shown = [-1]

    def show(done: int, total: int) -> None:
        tenth = done * 10 // total if total else 10
        if tenth != shown[0]:
            shown[0] = tenth
            log.info("%s: %s %d%% (%s of %s)", host, what, tenth * 10,
                     size_text(done), size_text(total))  # fmt: skip

    return show


def _remote_temp(connection: Connection) -> str:
    made = connection.run("mktemp", hide=True, in_stream=False, warn=True)
    if not made.ok:
        raise HostError(
            host_label(connection),
            f"cannot make a temporary file: {failure_line(made)}",
        )
    return str(made.stdout).strip()


def default_backup_name(spec: RegistrySpec, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", spec.authority)
    return f"registry-backup-{safe}-{now:%Y%m%d-%H%M%S}.tar.gz"


BACKUP_HELP = {
    "inventory": HELP_INVENTORY,
    "output": "File to write here; default: registry-backup-ADDRESS_PORT-TIME.tar.gz.",
}


@task(help=BACKUP_HELP, auto_shortflags=False)
@user_errors
def backup(c: Context, inventory: str | None = None, output: str | None = None) -> None:
    """Copy the registry's data and users file to this machine, as one .tar.gz.

    The registry is stopped while the archive is made on the host, then started
    again; the download runs with the registry up, with progress lines. The local
    file is 0600 (it holds password hashes) and appears only once complete.
    """
    spec, connection = open_registry(c, inventory)
    spec = live_spec(connection, spec)
    host = host_label(connection)
    target = Path(output or default_backup_name(spec))
    if target.exists():
        raise InputError(f"--output {target}: already exists; pick another name")
    if not target.parent.is_dir():
        raise InputError(f"--output {target}: no such folder {target.parent}")
    # Before the registry stops for the archive: can the file be written here at all?
    try:
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise InputError(
            f"--output {target}: cannot write in {target.parent} ({exc.strerror}); "
            "pick a writable folder"
        ) from None
    os.close(handle)
    os.chmod(partial, 0o600)
    try:
        remote = _remote_temp(connection)
        try:
            result = run_as_root(connection, render_backup(spec, remote), what="backup")
            if not result.ok:
                raise HostError(host, f"backup failed: {failure_line(result)}")
            connection.sftp().get(
                remote, partial, callback=progress_printer(host, "download")
            )
            os.replace(partial, target)
        finally:
            run_as_root(connection, f"rm -f {shlex.quote(remote)}\n", what="cleanup")
    except OSError as exc:
        raise HostError(
            host, f"the download to {target} failed: {exc.strerror or exc}"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    size = target.stat().st_size
    outcome = Outcome(host, CHANGED, [f"wrote {target} ({size_text(size)})"])
    log_outcome(outcome)
    warn_expiry_of(StateFolder(Path(DEFAULT_PKI_DIR)))
    finish([outcome], f"restore with: fab restore --archive {shlex.quote(str(target))}")


RESTORE_HELP = {
    "archive": "A .tar.gz made by backup.",
    "inventory": HELP_INVENTORY,
    "pki_dir": HELP_PKI_DIR,
}


@task(help=RESTORE_HELP, auto_shortflags=False)
@user_errors
def restore(
    c: Context,
    archive: str | None = None,
    inventory: str | None = None,
    pki_dir: str = DEFAULT_PKI_DIR,
) -> None:
    """Put a backup's data and users back into the registry, then check it serves.

    The registry is stopped while the archive is unpacked and started again. The data
    it had is not deleted: it is moved to .before-restore-TIME inside the data folder
    (delete that when satisfied). Run setup-registry first on a new host.
    """
    if archive is None:
        raise InputError("--archive: give the backup to restore, --archive FILE.tar.gz")
    source = Path(archive)
    if not source.is_file():
        raise InputError(f"--archive {archive}: no such file")
    check_backup_archive(source)
    spec, connection = open_registry(c, inventory, pki_dir)
    spec = live_spec(connection, spec)
    host = host_label(connection)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    archive_sha = file_digest(source)
    last = run_as_root(connection, render_restore_state(spec), what="restore state")
    if last.ok and restored_already(last.stdout, archive_sha):
        outcome = Outcome(
            host,
            UNCHANGED,
            [f"the data is as restoring {source.name} left it; nothing to do"],
        )
        log_outcome(outcome)
        finish([outcome])
        return
    remote = _remote_temp(connection)
    try:
        connection.sftp().put(
            str(source), remote, callback=progress_printer(host, "upload")
        )
        result = run_as_root(
            connection,
            render_restore(spec, remote, stamp, archive_sha),
            what="restore",
        )
    finally:
        run_as_root(connection, f"rm -f {shlex.quote(remote)}\n", what="cleanup")
    if not result.ok:
        reason = {
            5: f"{archive} is not a backup made by this tool: ",
            6: "",
        }
        raise HostError(
            host,
            f"restore failed: {reason.get(result.exited, '')}{failure_line(result)}",
        )
    said = result.stdout.splitlines()
    details = [f"restored {source.name}"]
    details += [line for line in said if line.startswith(("kept", "restored users"))]
    state = StateFolder(Path(pki_dir))
    if "was-running true" not in said:
        details.append("the registry was stopped before and stays so: fab restart")
    elif "restored users" in said and state.ca_cert_path.exists():
        # Users in the backup mean a login: a registry that asked none so far must
        # be recreated to ask it, or the restored users would guard nothing.
        deployed = certify_and_deploy(spec, connection, state, report=False)
        details += [note for note in deployed.details if "login" in note]
    elif state.ca_cert_path.exists():
        check = wait_for_tls(spec.address, spec.port, state.trust_bundle(), None, 30)
        if not check.ok:
            raise HostError(
                host, f"after the restore, the TLS check failed: {check.problem}"
            )
        details.append(f"https://{spec.authority}/v2/ serves TLS")
    outcome = Outcome(host, CHANGED, details)
    log_outcome(outcome)
    finish([outcome])
