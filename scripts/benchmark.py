"""How fast trust-clients is on 50 hosts, beside plain OpenSSH and Ansible.

Brings up a lab of sshd-only hosts on this machine and, round after round, installs
the registry's CA on all of them three ways:

- the floor: one plain ``ssh HOST 'mkdir -p ... && cat > ...'`` per host, all at once;
- ours: the real ``fab trust-clients``, a first run (every host changes) and a second
  run (nothing to change);
- Ansible: a playbook with the file and copy modules, forks equal to our pool size and
  pipelining on, first and second run.

It prints the medians, the ratios ours/floor and ansible/ours, the SSH connections and
sessions each host's sshd logged, and the fab process's peak memory at 10 and at all
hosts. Run it with ``make bench``. It needs root (the lab) and ansible-core
(requirements-bench.txt). The registry address only names the folder on the clients:
nothing connects to it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from tasks.pki import StateFolder, cert_pem  # noqa: E402
from tasks.remote import DEFAULT_WORKERS  # noqa: E402
from tests.lab import Lab, LabHost  # noqa: E402

# Our own lab, apart from `make demo`'s and the tests' on this shared machine.
SUBNET = "10.231.20"
PREFIX = "regbench"
REGISTRY = f"{SUBNET}.2"
AUTHORITY = f"{REGISTRY}:5000"
CA_DIR = f"/etc/docker/certs.d/{AUTHORITY}"
CERTS_D = "etc/docker/certs.d"  # the same, under a lab host's files/
VENV_BIN = Path(sys.executable).parent
MEMORY_HOSTS = 10
KEX = "curve25519-sha256"
RUN_TIMEOUT = 300.0


@dataclass
class Measure:
    """One timed run of one way of doing the job."""

    seconds: float
    control_cpu: float  # user + system of the processes we started
    machine_cpu: float  # every process on the machine, sshd included
    max_rss_kb: int
    connections: list[int] = field(default_factory=list)  # per host, from sshd
    sessions: list[int] = field(default_factory=list)


def fail(message: str, output: Path) -> NoReturn:
    """Stop with the end of the run's output: the scratch folder goes away on exit."""
    tail = output.read_text(errors="replace").splitlines()[-20:]
    sys.exit(f"benchmark: {message}; the run's last lines:\n" + "\n".join(tail))


# Measuring -------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine so far, from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_processes(
    argvs: Sequence[Sequence[str]],
    *,
    output: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: Path | None = None,
) -> Measure:
    """Start every argv at once, wait for all, and time them as one run.

    os.wait4 gives each process's own rusage (its peak RSS and CPU), which
    subprocess does not expose.
    """
    with ExitStack() as files:
        log = files.enter_context(open(output, "wb"))
        started_cpu, started = machine_busy_seconds(), time.monotonic()
        processes = [
            subprocess.Popen(
                list(argv),
                stdin=files.enter_context(open(stdin, "rb"))
                if stdin
                else subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=cwd,
                env=env,
            )
            for argv in argvs
        ]
        cpu, peak, failed = 0.0, 0, 0
        for process in processes:
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            peak = max(peak, usage.ru_maxrss)
            failed += process.returncode != 0
        seconds = time.monotonic() - started
        machine = machine_busy_seconds() - started_cpu
    if failed:
        fail(f"{failed} of {len(argvs)} processes failed", output)
    return Measure(seconds, cpu, machine, peak)


class SshdLogs:
    """Counts what each host's sshd logged (LogLevel VERBOSE) during one run."""

    CONNECTION = re.compile(rb"Accepted publickey for ")
    SESSION = re.compile(rb"Starting session: ")

    def __init__(self, hosts: Sequence[LabHost]) -> None:
        self.hosts = hosts
        self.offsets = {host.name: self._size(host) for host in hosts}

    @staticmethod
    def _path(host: LabHost) -> Path:
        return host.logs / "sshd.log"

    def _size(self, host: LabHost) -> int:
        path = self._path(host)
        return path.stat().st_size if path.exists() else 0

    def count(self, measure: Measure) -> None:
        for host in self.hosts:
            with open(self._path(host), "rb") as stream:
                stream.seek(self.offsets[host.name])
                text = stream.read()
            measure.connections.append(len(self.CONNECTION.findall(text)))
            measure.sessions.append(len(self.SESSION.findall(text)))


def enable_verbose_sshd_logs(lab: Lab) -> None:
    """Make every sshd log each login and each session, to count them per run."""
    for host in lab.hosts:
        config = host.home / "sshd_config"
        text = config.read_text()
        if "LogLevel VERBOSE" not in text:
            config.write_text(text + "LogLevel VERBOSE\n")
        lab.stop_sshd(host.name)
        lab.start_sshd(host.name)


# The three ways --------------------------------------------------------------------


@dataclass
class Bench:
    """The lab, the CA and the scratch folder every way of doing the job shares."""

    lab: Lab
    scratch: Path
    ca_pem: bytes
    workers: int
    runs: int = 0

    @property
    def ca_file(self) -> Path:
        return self.scratch / "pki" / "ca.crt"

    def reset(self, hosts: Sequence[LabHost]) -> None:
        """Remove the CA folders, so the next run has everything to write."""
        for host in hosts:
            shutil.rmtree(host.files / CERTS_D, ignore_errors=True)

    def check_installed(self, hosts: Sequence[LabHost], what: str) -> None:
        """Every host must hold exactly our CA, or the timing means nothing."""
        wrong = [
            host.name
            for host in hosts
            if _read(host.files / CERTS_D / AUTHORITY / "ca.crt") != self.ca_pem
        ]
        if wrong:
            sys.exit(f"benchmark: {what} left no correct CA on {', '.join(wrong)}")

    def _output(self, name: str) -> Path:
        self.runs += 1
        return self.scratch / "logs" / f"{self.runs:03d}-{name}.log"

    def floor(self, hosts: Sequence[LabHost], kex: str | None = None) -> Measure:
        ssh = ["ssh", "-F", str(self.lab.ssh_config())]
        if kex:
            ssh += ["-o", f"KexAlgorithms={kex}"]
        command = f"mkdir -p '{CA_DIR}' && cat > '{CA_DIR}/ca.crt'"
        argvs = [[*ssh, host.address, command] for host in hosts]
        measure = run_processes(
            argvs, output=self._output("floor"), cwd=self.scratch, stdin=self.ca_file
        )
        self.check_installed(hosts, "plain ssh")
        return measure

    def ours(self, hosts: Sequence[LabHost], expect: str) -> Measure:
        argv = [
            str(VENV_BIN / "fab"),
            "--search-root", str(PROJECT),
            "-f", str(self.lab.fabric_config()),
            "-H", ",".join(host.address for host in hosts),
            "trust-clients",
            "--registry", REGISTRY,
            "--runtimes", "docker",
            "--pki-dir", str(self.scratch / "pki"),
            "--workers", str(self.workers),
        ]  # fmt: skip
        output = self._output(f"ours-{expect}")
        # The scratch folder has no inventory.yaml, so only -H and options count.
        measure = run_processes([argv], output=output, cwd=self.scratch)
        recap = f"recap: {len(hosts)} hosts: {len(hosts)} {expect}"
        if recap not in output.read_text():
            fail(f"trust-clients did not say {recap!r}", output)
        self.check_installed(hosts, "trust-clients")
        return measure

    def write_ansible_files(self, hosts: Sequence[LabHost]) -> None:
        folder = self.scratch / "ansible"
        folder.mkdir(exist_ok=True)
        ssh_config = self.lab.ssh_config()
        (folder / "inventory.ini").write_text(
            "[clients]\n"
            + "".join(f"{host.address}\n" for host in hosts)
            + "\n[clients:vars]\n"
            "ansible_user=root\n"
            # Interpreter discovery picks a pyenv shim on this machine and fails.
            "ansible_python_interpreter=/usr/bin/python3\n"
            f"ansible_ssh_common_args='-F {ssh_config}'\n"
        )
        (folder / "ansible.cfg").write_text(
            "[defaults]\n"
            f"forks = {self.workers}\n"
            "gathering = explicit\n"
            "retry_files_enabled = false\n"
            "nocolor = true\n"
            # Lab hosts share /root with the control machine; /tmp is their own.
            "remote_tmp = /tmp/.ansible/tmp\n"
            f"local_tmp = {folder / 'local'}\n"
            "[ssh_connection]\n"
            "pipelining = true\n"
        )
        (folder / "playbook.yml").write_text(
            "- hosts: clients\n"
            "  gather_facts: false\n"
            "  tasks:\n"
            "    - name: CA folder\n"
            "      ansible.builtin.file:\n"
            f"        path: {CA_DIR}\n"
            "        state: directory\n"
            '        mode: "0755"\n'
            "    - name: CA certificate\n"
            "      ansible.builtin.copy:\n"
            f"        src: {self.ca_file}\n"
            f"        dest: {CA_DIR}/ca.crt\n"
            '        mode: "0644"\n'
        )

    def ansible(self, hosts: Sequence[LabHost], expect: str) -> Measure:
        folder = self.scratch / "ansible"
        # A fresh ControlPath folder per run: every run starts without a master
        # connection, as ours does; within a run Ansible keeps its multiplexing.
        control = Path(tempfile.mkdtemp(prefix="cp-", dir=folder))
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(folder / "ansible.cfg"),
            "ANSIBLE_HOME": str(folder / "home"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
            "LC_ALL": "C.UTF-8",  # Ansible refuses to start without a UTF-8 locale
        }
        argv = [
            str(VENV_BIN / "ansible-playbook"),
            "-i", str(folder / "inventory.ini"),
            str(folder / "playbook.yml"),
        ]  # fmt: skip
        output = self._output(f"ansible-{expect}")
        try:
            measure = run_processes([argv], output=output, cwd=folder, env=env)
        finally:
            close_control_masters(control)
        check_ansible_recap(output, len(hosts), changed=expect == "changed")
        self.check_installed(hosts, "ansible")
        return measure


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def close_control_masters(folder: Path) -> None:
    """Stop the master connections Ansible leaves behind for ControlPersist."""
    for socket in folder.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "lab"],
            capture_output=True,
            check=False,
        )
    shutil.rmtree(folder, ignore_errors=True)


def check_ansible_recap(output: Path, hosts: int, changed: bool) -> None:
    lines = re.findall(r"^\S+\s+: ok=.*$", output.read_text(), re.MULTILINE)
    good = [
        line
        for line in lines
        if "unreachable=0" in line
        and "failed=0" in line
        and ("changed=0" not in line) == changed
    ]
    if len(good) != hosts:
        fail("ansible did not finish as expected", output)


# The run ---------------------------------------------------------------------------

SCENARIOS = (
    ("floor", "plain ssh, all at once"),
    ("floor-kex", "plain ssh, curve25519 key exchange"),
    ("ours-1", "trust-clients, first run"),
    ("ours-2", "trust-clients, nothing to change"),
    ("ansible-1", "ansible, first run"),
    ("ansible-2", "ansible, nothing to change"),
)


def one_round(
    bench: Bench, hosts: Sequence[LabHost], ansible: bool
) -> dict[str, Measure]:
    results: dict[str, Measure] = {}

    def measured(name: str, run: Callable[[], Measure]) -> None:
        logs = SshdLogs(hosts)
        results[name] = run()
        logs.count(results[name])
        print(f"  {name:<10} {results[name].seconds:6.1f} s", flush=True)

    bench.reset(hosts)
    measured("floor", lambda: bench.floor(hosts))
    # OpenSSH 9's default key exchange (sntrup761x25519) costs each ssh client
    # ~90 ms of CPU; paramiko offers curve25519. This floor uses the same one.
    bench.reset(hosts)
    measured("floor-kex", lambda: bench.floor(hosts, kex=KEX))
    bench.reset(hosts)
    measured("ours-1", lambda: bench.ours(hosts, "changed"))
    measured("ours-2", lambda: bench.ours(hosts, "unchanged"))
    if ansible:
        bench.reset(hosts)
        measured("ansible-1", lambda: bench.ansible(hosts, "changed"))
        measured("ansible-2", lambda: bench.ansible(hosts, "unchanged"))
    return results


def spread(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def report(rounds: list[dict[str, Measure]], hosts: int, workers: int) -> None:
    def median(name: str, value: Callable[[Measure], float]) -> float:
        return statistics.median(value(r[name]) for r in rounds if name in r)

    print(
        f"\n{hosts} hosts, --workers {workers}, medians of {len(rounds)} rounds "
        f"({os.cpu_count()} cores shared by the control side and every lab sshd)\n"
    )
    print(
        f"{'':<34}{'wall s':>8}{'ctl CPU s':>11}{'all CPU s':>11}"
        f"{'conns/host':>12}{'cmds/host':>11}"
    )
    for name, title in SCENARIOS:
        if name not in rounds[0]:
            continue
        last = rounds[-1][name]
        print(
            f"{title:<34}{median(name, lambda m: m.seconds):>8.1f}"
            f"{median(name, lambda m: m.control_cpu):>11.1f}"
            f"{median(name, lambda m: m.machine_cpu):>11.1f}"
            f"{spread(last.connections):>12}{spread(last.sessions):>11}"
        )

    def ratio(top: str, bottom: str) -> str:
        if top not in rounds[0] or bottom not in rounds[0]:
            return "n/a"
        # Each round's own ratio, then the median: rounds share the machine's load.
        values = [r[top].seconds / r[bottom].seconds for r in rounds]
        return f"{statistics.median(values):.2f}"

    print(
        f"\nours/floor:   first run {ratio('ours-1', 'floor')}, "
        f"nothing to change {ratio('ours-2', 'floor')}   (target: first run <= 1.5)"
    )
    print(
        f"ours/floor with {KEX}: first run {ratio('ours-1', 'floor-kex')}, "
        f"nothing to change {ratio('ours-2', 'floor-kex')}"
    )
    print(
        f"ansible/ours: first run {ratio('ansible-1', 'ours-1')}, "
        f"nothing to change {ratio('ansible-2', 'ours-2')}   (target: >= 3)"
    )


def measure_memory(bench: Bench, hosts: Sequence[LabHost]) -> dict[int, int]:
    """Peak RSS of the fab process (first run, all changed) at 10 and all hosts."""
    peaks: dict[int, int] = {}
    for count in sorted({min(MEMORY_HOSTS, len(hosts)), len(hosts)}):
        bench.reset(hosts[:count])
        peaks[count] = bench.ours(hosts[:count], "changed").max_rss_kb
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, default=50, help="lab hosts (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"our pool size and Ansible's forks (default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--no-ansible", action="store_true", help="skip Ansible (much faster)"
    )
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    options = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmark: run as root (the lab uses network namespaces)")
    if not options.no_ansible and not (VENV_BIN / "ansible-playbook").exists():
        sys.exit("benchmark: ansible-core missing; run `make bench`")

    lab = Lab(workdir=PROJECT / ".lab" / "bench", subnet=SUBNET, prefix=PREFIX)
    started = time.monotonic()
    print(f"bringing up {options.hosts} lab hosts (sshd only)", flush=True)
    lab.up([(f"c{index}", False) for index in range(options.hosts)])
    try:
        enable_verbose_sshd_logs(lab)
        with tempfile.TemporaryDirectory(prefix="regbench-") as folder:
            scratch = Path(folder)
            (scratch / "logs").mkdir()
            state = StateFolder(scratch / "pki")
            ca_pem = cert_pem(state.ensure_ca([REGISTRY]).cert)
            bench = Bench(lab, scratch, ca_pem, options.workers)
            hosts = lab.hosts
            bench.write_ansible_files(hosts)

            # Unmeasured: fills known_hosts and warms caches for every host.
            bench.reset(hosts)
            bench.floor(hosts)
            peaks = measure_memory(bench, hosts)

            rounds = []
            for number in range(1, options.rounds + 1):
                print(f"round {number}/{options.rounds}", flush=True)
                rounds.append(one_round(bench, hosts, not options.no_ansible))
            report(rounds, len(hosts), options.workers)
            print(
                "peak memory of fab trust-clients: "
                + ", ".join(
                    f"{kb / 1024:.0f} MiB at {n} hosts" for n, kb in peaks.items()
                )
            )
            if "ansible-1" in rounds[-1]:
                rss = rounds[-1]["ansible-1"].max_rss_kb / 1024
                print(f"(ansible-playbook, largest process: {rss:.0f} MiB)")
    finally:
        if not options.keep:
            lab.down()
    print(f"benchmark took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
