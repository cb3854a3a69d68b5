"""Fixtures shared by the lab tests: the lab itself and a way to run ``fab`` in it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.lab import Lab

PROJECT = Path(__file__).resolve().parent.parent
FAB = Path(sys.executable).parent / "fab"
LAB_HOSTS = [("registry", True), ("client1", True), ("client2", False)]


@dataclass
class FabResult:
    code: int
    output: str  # standard output and error together, as a user sees them
    stdout: str = ""


@dataclass
class Workspace:
    """A control-machine folder of the user's: inventory, state folder, and ``fab``."""

    lab: Lab
    folder: Path

    def fab(
        self, *args: str, timeout: float = 300, config: Path | None = None
    ) -> FabResult:
        """Run the real ``fab`` command with the lab's SSH settings, as a user would.

        ``config`` replaces the lab's Fabric config file.
        """
        command = [
            str(FAB), "--search-root", str(PROJECT),
            "--config", str(config or self.lab.fabric_config()), *args,
        ]  # fmt: skip
        done = subprocess.run(
            command,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        output = done.stdout + done.stderr
        print(f"$ fab {' '.join(args)}\n{output}")
        return FabResult(done.returncode, output, done.stdout)

    def write_inventory(self, document: dict[str, object]) -> Path:
        path = self.folder / "inventory.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The lab's hosts, new for each test module (a few seconds), so that no module
    depends on what another left behind; skipped only where it cannot run."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, sshd, dockerd)")
    # Its own names and subnet, so the tests can run while `make demo` has a lab up.
    lab = Lab(
        PROJECT / ".lab" / "tests",
        subnet=os.environ.get("LAB_TEST_SUBNET", "10.231.1"),
        prefix=os.environ.get("LAB_TEST_PREFIX", "reglabt"),
    )
    lab.up(LAB_HOSTS)
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def workspace(lab: Lab, tmp_path: Path) -> Workspace:
    return Workspace(lab, tmp_path)


def run_on(lab: Lab, name: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run a command on a lab host without raising; tests assert on the result."""
    return lab.host(name).run(command, check=False, timeout=180)
