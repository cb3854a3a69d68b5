"""docker login on clients: what is read, compared and run."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import pki
from tasks.clients import Registry
from tasks.errors import HostError
from tasks.logins import (
    LoginState,
    check_credentials,
    expected_auth,
    login_problem,
    parse_login_state,
    plan_login,
    render_login,
)
from tasks.report import CHANGED, UNCHANGED
from tasks.users import hash_password, render_htpasswd
from tests.test_tls import REGISTRY as REGISTRY_BINARY
from tests.test_tls import serve, write_pair

REGISTRY = Registry("203.0.113.7", 5000)


def probe_output(config: object | None, docker: bool = True) -> str:
    first = "docker" if docker else "no-docker"
    if config is None:
        return f"{first}\n\n"
    encoded = base64.b64encode(json.dumps(config).encode()).decode()
    return f"{first}\n{encoded}\n"


def test_the_auth_docker_writes_is_base64_of_name_and_password() -> None:
    assert base64.b64decode(expected_auth("ci", "pa:ss word")) == b"ci:pa:ss word"


def test_parse_login_state_reads_this_registrys_entry() -> None:
    config = {
        "auths": {
            "203.0.113.7:5000": {"auth": expected_auth("ci", "secret-1")},
            "203.0.113.7:5001": {"auth": "other"},
        }
    }
    state = parse_login_state(probe_output(config), REGISTRY, "h")
    assert state == LoginState(docker=True, auth=expected_auth("ci", "secret-1"))
    assert parse_login_state(probe_output(None), REGISTRY, "h") == LoginState(True)
    assert parse_login_state(probe_output(None, docker=False), REGISTRY, "h") == (
        LoginState(False)
    )
    helper = {"credsStore": "pass", "auths": {"203.0.113.7:5000": {}}}
    assert parse_login_state(probe_output(helper), REGISTRY, "h").helper == "pass"


@pytest.mark.parametrize("config", ["not json", "[1, 2]"])
def test_a_broken_docker_config_fails_that_host_with_the_fix(config: str) -> None:
    encoded = base64.b64encode(config.encode()).decode()
    with pytest.raises(HostError, match=r"/root/.docker/config.json is not"):
        parse_login_state(f"docker\n{encoded}\n", REGISTRY, "root@h")


def test_plan_login_acts_only_on_a_difference() -> None:
    wanted = expected_auth("ci", "secret-1")
    assert plan_login(LoginState(True, wanted), wanted, False) == (
        UNCHANGED,
        "logged in already",
    )
    assert plan_login(LoginState(True, "old"), wanted, False) is None
    assert plan_login(LoginState(True, wanted, "pass"), wanted, False) is None
    assert plan_login(LoginState(True), None, True) == (UNCHANGED, "not logged in")
    assert plan_login(LoginState(True, wanted), None, True) is None
    status, detail = plan_login(LoginState(False), wanted, False) or ("", "")
    assert status == UNCHANGED and "no docker" in detail
    assert status != CHANGED


def test_the_password_never_stands_on_a_command_line() -> None:
    script = render_login(REGISTRY, "ci", "s3cret $(touch /tmp/x) 'q'")
    lines = script.splitlines()
    login = next(line for line in lines if "docker login" in line)
    assert "s3cret" not in login
    assert "--password-stdin" in login and "--username ci" in login
    # The password sits in a quoted here-document, taken as it is.
    assert "s3cret $(touch /tmp/x) 'q'" in lines
    marker = lines[1].split("<<'")[1].rstrip("'")
    assert lines[lines.index("s3cret $(touch /tmp/x) 'q'") + 1] == marker


@pytest.mark.parametrize(
    ("said", "fix"),
    [
        ("Error response from daemon: login attempt failed: unauthorized", "add-user"),
        ("x509: certificate signed by unknown authority", "run trust-clients first"),
        ("connection refused", "docker login failed: connection refused"),
        (
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.",
            "docker's daemon does not answer here; start it",
        ),
    ],
)
def test_login_problems_name_the_fix(said: str, fix: str) -> None:
    assert fix in login_problem(said, REGISTRY)


# Against the real registry binary on loopback (our client never skips TLS checks).


def loopback_tls(tmp_path: Path) -> tuple[bytes, tuple[Path, Path]]:
    """A CA for 127.0.0.1 and a server certificate and key of it, in tmp_path."""
    if REGISTRY_BINARY is None:
        pytest.skip("docker-registry missing")
    key = pki.generate_key()
    ca = pki.Issued(pki.issue_ca(key, ["127.0.0.1"]), key, None)
    server_key = pki.generate_key()
    cert = pki.issue_server_cert(ca.cert, ca.key, server_key, ["127.0.0.1"])
    return pki.cert_pem(ca.cert), write_pair(tmp_path, cert, server_key)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Registry, bytes, Path]]:
    """A TLS registry on loopback asking for alice's password; its Registry, the CA
    and the users file."""
    ca_pem, pair = loopback_tls(tmp_path)
    users = tmp_path / "htpasswd"
    users.write_text(render_htpasswd({"alice": hash_password("s3cret-enough")}))
    with serve(tmp_path, pair, users) as port:
        yield Registry("127.0.0.1", port), ca_pem, users


def test_credentials_are_tried_against_the_registry(
    served: tuple[Registry, bytes, Path],
) -> None:
    registry, ca_pem, _ = served
    assert check_credentials(registry, ca_pem, "alice", "s3cret-enough") is None
    with pytest.raises(HostError, match="the registry refused alice's password"):
        check_credentials(registry, ca_pem, "alice", "not-the-password")
    with pytest.raises(HostError, match="refused bob's password"):
        check_credentials(registry, ca_pem, "bob", "s3cret-enough")


def test_a_registry_without_login_or_out_of_reach(tmp_path: Path) -> None:
    ca_pem, pair = loopback_tls(tmp_path)
    with (
        serve(tmp_path, pair) as port,
        pytest.raises(HostError, match="the registry asks no login"),
    ):
        check_credentials(Registry("127.0.0.1", port), ca_pem, "alice", "x" * 8)
    note = check_credentials(Registry("127.0.0.1", port), ca_pem, "alice", "x" * 8)
    assert note is not None and note.startswith("note: cannot reach 127.0.0.1:")
