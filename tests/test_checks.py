"""check-clients: the check script (syntax, and run by a real shell against stub tools),
what it prints read back, and the finding and fix for each kind of failure."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.checks import (
    ClientCheck,
    PullProbe,
    TlsProbe,
    check_outcome,
    image_reference,
    judge,
    no_proxy_covers,
    parse_check,
    proxy_settings,
    redact_proxy,
    render_check,
    systemd_environment,
    tool_message,
)
from tasks.clients import Registry
from tasks.errors import InputError
from tasks.report import FAILED, OK
from tasks.runtimes import hosts_toml

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
OURS = hashlib.sha256(CA).hexdigest()
OTHER = "0" * 64
REGISTRY = Registry("203.0.113.7", 5000)
A = REGISTRY.authority
DOCKER_CA = f"/etc/docker/certs.d/{A}/ca.crt"
PODMAN_CA = f"/etc/containers/certs.d/{A}/ca.crt"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def outcome_for(output: str) -> tuple[str, str]:
    """The host's status and its line, from what the script printed."""
    outcome = check_outcome("h", judge(parse_check(output), REGISTRY, CA))
    return outcome.status, "; ".join(outcome.details)


# --image ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("lab/app:1", "lab/app:1"),
        ("app", "app"),
        (f"{A}/team/app:2.0", "team/app:2.0"),
        ("a/b@sha256:" + "a" * 64, "a/b@sha256:" + "a" * 64),
    ],
)
def test_image_names_are_taken_inside_the_registry(given: str, name: str) -> None:
    assert image_reference(given, REGISTRY) == name


@pytest.mark.parametrize(
    "given", ["10.0.0.9:5000/app:1", "docker.io/library/app", "App:1", "a b", "x;rm"]
)
def test_bad_or_foreign_images_are_refused(given: str) -> None:
    with pytest.raises(InputError, match="--image"):
        image_reference(given, REGISTRY)


# The script --------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize("image", [None, "lab/app:1"])
@pytest.mark.parametrize(
    "registry", [REGISTRY, Registry("2001:db8::5", 5000), Registry("10.1.2.3", 443)]
)
def test_script_is_valid_shell(
    shell: str, image: str | None, registry: Registry
) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    script = render_check(registry, ["auto", "system"], image)
    done = subprocess.run(
        [shell, "-n"], input=script, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_script_checks_the_way_each_runtime_reads_trust() -> None:
    script = render_check(REGISTRY, ["docker", "containerd", "podman"], None)
    assert "command -v" in script  # tools, not runtimes, are looked up
    assert f"check_ca docker {DOCKER_CA}" in script
    assert f"'/etc/containerd/certs.d/{A}/hosts.toml'" not in script  # no quotes needed
    assert f"/etc/containerd/certs.d/{A}/hosts.toml" in script
    assert f"/etc/containerd/certs.d/{A}/host.toml" in script  # C06 typo
    assert "ctr images pull --hosts-dir /etc/containerd/certs.d" in script  # C06
    assert "timeout 2 ctr version" in script
    assert "/etc/docker/cert.d" in script  # C03 typo
    assert "--noproxy '*'" in script and "--globoff" in script
    assert "/etc/docker/daemon.json" in script
    assert "/etc/systemd/system/containerd.service.d/*.conf" in script
    assert script.rstrip().endswith("exit 0")


def test_script_detects_runtimes_only_for_auto() -> None:
    assert "command -v dockerd" in render_check(REGISTRY, ["auto"], None)
    explicit = render_check(REGISTRY, ["podman"], None)
    assert "command -v dockerd" not in explicit
    assert "check_ca docker" not in explicit


def test_openssl_fallback_checks_the_ip_san() -> None:
    assert "VERIFY='-verify_ip 203.0.113.7'" in render_check(REGISTRY, ["docker"], None)
    v6 = render_check(Registry("2001:db8::5", 5000), ["docker"], None)
    assert "VERIFY='-verify_ip 2001:db8::5'" in v6
    assert "A='[2001:db8::5]:5000'" in v6


STUB_CURL = r"""#!/bin/sh
# Answers like a registry, or fails like curl does, as $CURL_MODE says.
out='' url='' code=''
while [ $# -gt 0 ]; do
  case "$1" in --output) out=$2; shift ;; --write-out) code=200; shift ;;
  --cacert|--connect-timeout|--max-time|--noproxy) shift ;; -*) ;; *) url=$1 ;; esac
  shift
done
echo "curl $url" >>"$STUB_LOG"
case "$CURL_MODE" in
  refused) echo "curl: (7) Failed to connect to 203.0.113.7 port 5000" >&2; printf 000
           exit 7 ;;
  untrusted) echo "curl: (60) SSL certificate problem: unable to get local issuer \
certificate" >&2; printf 000; exit 60 ;;
esac
case "$url" in
  */_catalog*) body='{"repositories":["lab/app"]}' ;;
  */tags/list) body='{"name":"lab/app","tags":["1","2"]}' ;;
  *) body='{}' ;;
esac
if [ -n "$out" ] && [ "$out" != /dev/null ]; then printf '%s' "$body" >"$out"; fi
printf '%s' "$code"
"""

STUB_DOCKER = r"""#!/bin/sh
echo "docker $*" >>"$STUB_LOG"
case "$1" in
  version) echo 28.2.2 ;;
  info) echo '|' ;;
  image) [ -f "$STUB_DIR/pulled" ] && echo sha256:new || exit 1 ;;
  pull) touch "$STUB_DIR/pulled" ;;
esac
exit 0
"""

TOOLS = (
    "sh", "cat", "cut", "grep", "sed", "tail", "mktemp", "rm", "base64", "sha256sum",
    "timeout", "touch", "printf",
)  # fmt: skip


def run_with_stubs(tmp_path: Path, script: str, curl_mode: str) -> tuple[str, str]:
    """Run the check script with only coreutils and stub curl and docker on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"no {tool} here")
        (bin_dir / tool).symlink_to(found)
    for name, text in (("curl", STUB_CURL), ("docker", STUB_DOCKER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    environment = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_DIR": str(tmp_path),
        "CURL_MODE": curl_mode,
    }
    done = subprocess.run(
        ["sh", "-s"],
        input=script,
        capture_output=True,
        text=True,
        env={**environment, "LANG": os.environ.get("LANG", "C")},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, log.read_text()


def test_script_picks_an_image_pulls_it_and_leaves_no_trace(tmp_path: Path) -> None:
    # No CA file here: the OS store is tried, the catalog names lab/app:1, the
    # docker pull happens and the image, absent before, is removed again.
    script = render_check(REGISTRY, ["docker"], None)
    output, calls = run_with_stubs(tmp_path, script, "ok")
    check = parse_check(output)
    assert check.runtimes == ["docker"]
    assert check.ca_files[0].path == DOCKER_CA
    assert check.ca_files[0].digest is None
    assert check.tls == [TlsProbe("-", "curl", 0, 200)]
    assert check.image == "lab/app:1"
    assert check.pulls == [PullProbe("docker", 0)]
    assert f"docker pull --quiet {A}/lab/app:1" in calls
    assert f"docker rmi {A}/lab/app:1" in calls
    assert check.live_docker_proxy == ("", "")


@pytest.mark.parametrize(
    ("mode", "kind"), [("refused", "network: "), ("untrusted", "trust: ")]
)
def test_script_tells_network_from_trust(tmp_path: Path, mode: str, kind: str) -> None:
    output, calls = run_with_stubs(
        tmp_path, render_check(REGISTRY, ["docker"], "lab/app:1"), mode
    )
    status, line = outcome_for(output)
    assert status == FAILED
    assert line.startswith(kind) or f"; {kind}" in line
    if mode == "refused":
        assert "docker pull" not in calls  # nothing to learn from a pull then


# Reading the output ------------------------------------------------------------------


def test_parse_reads_every_kind_of_line() -> None:
    config = b64("version = 2\n")
    check = parse_check(
        f"runtime docker\nca docker {DOCKER_CA} {OURS}\n"
        f"tls {DOCKER_CA} curl 60 000\ntlserr {DOCKER_CA} curl: (60) SSL problem\n"
        f"runtime containerd\nhoststoml /x/hosts.toml -\nhosttypo /x/host.toml\n"
        f"file containerd-config /etc/containerd/config.toml {config}\n"
        "version containerd containerd github.com/containerd/containerd v2.0.2 x\n"
        f"stray /etc/docker/certs.d/203.0.113.7\nstray /etc/docker/certs.d/203.0.113.7\n"
        f"file docker-json /etc/docker/daemon.json {b64('{}')}\n"
        f"proxylive docker {b64('http://p:3128|10.0.0.0/8')}\n"
        "login yes\nimage lab/app:1\npull docker 1\npullerr docker denied\n"
        "skip ctr containerd is not answering (ctr version)\nsomething else\n"
    )
    assert check.runtimes == ["docker", "containerd"]
    assert check.tls == [
        TlsProbe(DOCKER_CA, "curl", 60, None, "curl: (60) SSL problem")
    ]
    assert check.hosts_toml == ("/x/hosts.toml", None)
    assert check.host_toml_typo == ["/x/host.toml"]
    assert check.containerd_config == "version = 2\n"
    assert check.containerd_major == 2
    assert check.stray == ["/etc/docker/certs.d/203.0.113.7"]
    assert check.files == [("docker-json", "/etc/docker/daemon.json", "{}")]
    assert check.live_docker_proxy == ("http://p:3128", "10.0.0.0/8")
    assert check.logged_in
    assert check.pulls == [PullProbe("docker", 1, "denied")]
    assert check.skipped == [("ctr", "containerd is not answering (ctr version)")]


# Findings and fixes -------------------------------------------------------------------

TRUSTED = (
    f"runtime docker\nca docker {DOCKER_CA} {OURS}\ntls {DOCKER_CA} curl 0 200\n"
    "login no\n"
)


def test_a_client_that_works_is_ok_and_says_what_was_proven() -> None:
    status, line = outcome_for(TRUSTED + "image lab/app:1\npull docker 0\n")
    assert status == OK
    assert line == "docker trust; TLS; docker pull lab/app:1"


def test_missing_trust_fails_with_every_file_and_one_fix() -> None:
    status, line = outcome_for(
        f"runtime docker\nca docker {DOCKER_CA} -\nruntime podman\n"
        f"ca podman {PODMAN_CA} -\ntls - curl 60 000\n"
        "tlserr - curl: (60) SSL certificate problem: unable to get local issuer "
        "certificate\n"
    )
    assert status == FAILED
    assert line == (
        f"trust: {DOCKER_CA}: missing, {PODMAN_CA}: missing, TLS with the OS trust "
        "store fails: curl: (60) SSL certificate problem: unable to get local issuer "
        "certificate; run trust-clients"
    )


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (
            "curl 7 000\ntlserr F curl: (7) Failed to connect",
            f"network: cannot reach {A} from this host (curl: (7) Failed to connect); "
            f"check the firewall and the route to {A}",
        ),
        ("curl 28 000", "network: cannot reach"),
        (
            "curl 60 000\ntlserr F curl: (60) SSL certificate problem: self-signed",
            "the registry serves a certificate our CA did not sign; run "
            "setup-registry with this pki folder",
        ),
        (
            "curl 60 000\ntlserr F curl: (60) SSL: no alternative certificate subject "
            "name matches target host name '203.0.113.7'",
            "the registry's certificate does not hold 203.0.113.7",
        ),
        (
            "curl 60 000\ntlserr F curl: (60) SSL certificate problem: certificate has "
            "expired",
            "rotate-cert",
        ),
        (
            "curl 35 000\ntlserr F curl: (35) error:0A00010B:SSL routines::wrong "
            "version number",
            "tls: the TLS handshake with 203.0.113.7:5000 fails: curl: (35) "
            "error:0A00010B:SSL routines::wrong version number (the registry answers "
            "plain HTTP?)",  # C04
        ),
        ("curl 0 404", f"registry: https://{A}/v2/ answered HTTP 404"),
        (
            "openssl 1 -\ntlserr F 40F7:error:8000006F:system library:BIO_connect:"
            "Connection refused",
            "network: cannot reach",
        ),
        (
            "openssl 1 -\ntlserr F verify error:num=20:unable to get local issuer "
            "certificate",
            "trust: TLS with F fails: verify error",
        ),
    ],
)
def test_each_tls_failure_names_its_kind_and_fix(tls: str, expected: str) -> None:
    status, line = outcome_for(f"runtime docker\nca docker F {OURS}\ntls F {tls}\n")
    assert status == FAILED
    assert expected in line


def test_a_login_is_asked_for_when_the_registry_wants_one() -> None:
    wants_login = f"runtime docker\nca docker F {OURS}\ntls F curl 0 401\n"
    status, line = outcome_for(
        wants_login + "login no\nnoimage the catalog needs a login\n"
    )
    assert status == FAILED
    assert line.startswith(
        f"auth: {A} requires a login and this host has none; run fab login-clients "
        f"--name USER (or docker login {A} here)"
    )

    status, line = outcome_for(wants_login + "image app:1\npull docker 0\n")
    assert (status, line) == (
        OK,
        "docker trust; TLS (login required); docker pull app:1",
    )

    status, line = outcome_for(
        wants_login
        + "image app:1\npull docker 1\npullerr docker Error response from daemon: "
        "unauthorized: authentication required\n"
    )
    assert status == FAILED
    assert line.startswith(f"auth: docker pull {A}/app:1: Error response")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("x509: certificate signed by unknown authority", "trust"),
        (
            "proxyconnect tcp: dial tcp 10.9.9.9:3128: connect: connection refused",
            "proxy",
        ),
        ("dial tcp 203.0.113.7:5000: connect: connection refused", "network"),
        ("manifest unknown: manifest unknown", "image"),
        ("http: server gave HTTP response to HTTPS client", "tls"),
        ("no basic auth credentials", "auth"),
    ],
)
def test_pull_failures_are_classified(error: str, kind: str) -> None:
    status, line = outcome_for(
        TRUSTED + f"image app:1\npull docker 1\npullerr docker {error}\n"
    )
    assert status == FAILED
    assert line.startswith(f"{kind}: docker pull {A}/app:1: {error}")


def test_ipv6_names_old_clients_cannot_parse_are_told_apart() -> None:
    # Measured in the lab: docker 20.10 and skopeo 1.9 reject [ADDRESS]:PORT names,
    # while containerd pulls them.
    v6 = Registry("2001:db8::7", 5000)
    output = (
        TRUSTED.replace(A, v6.authority)
        + "image app:1\npull docker 1\npullerr docker Error response from daemon: "
        "invalid reference format\n"
    )
    outcome = check_outcome("h", judge(parse_check(output), v6, CA))
    line = "; ".join(outcome.details)
    assert outcome.status == FAILED
    assert line.startswith("name: docker pull [2001:db8::7]:5000/app:1")
    assert "cannot parse image names on an IPv6 address" in line
    assert "update it, or reach the registry by an IPv4 address" in line

    status, line = outcome_for(
        TRUSTED
        + "image app:1\npull docker 1\npullerr docker invalid reference format\n"
    )
    assert status == FAILED
    assert "check --image: app:1 is not a valid image name" in line


def test_ctr_log_lines_are_reduced_to_their_error() -> None:
    logged = (
        'time="2026-12-03T19:50:54Z" level=info msg="trying next host" error="failed '
        'to do request: Head \\"https://a:5000/v2/x/manifests/1\\": x509: certificate '
        'signed by unknown authority" host="a:5000"'
    )
    assert tool_message(logged) == (
        'failed to do request: Head "https://a:5000/v2/x/manifests/1": x509: '
        "certificate signed by unknown authority"
    )
    assert tool_message(" plain \n") == "plain"


def test_runtimes_that_do_not_answer_are_notes_not_failures() -> None:
    status, line = outcome_for(
        TRUSTED + "image app:1\npull skopeo 0\nskip docker dockerd is not answering\n"
    )
    assert status == OK
    assert line == (
        "docker trust; TLS; skopeo inspect app:1; note: runtime: dockerd is not "
        "answering; docker pull not tried"
    )


def test_an_empty_registry_is_a_note() -> None:
    status, line = outcome_for(TRUSTED + "noimage the registry holds no images yet\n")
    assert status == OK
    assert "note: image: no pull tried: the registry holds no images yet" in line


def test_no_runtime_fails() -> None:
    status, line = outcome_for("runtime none\ntls - curl 0 200\n")
    assert status == FAILED
    assert line.startswith("runtime: no container runtime found")


# C03: folders not named exactly ADDRESS:PORT.


def test_stray_folder_is_the_cause_when_the_exact_one_lacks_our_ca() -> None:
    status, line = outcome_for(
        f"runtime docker\nca docker {DOCKER_CA} -\ntls - curl 60 000\n"
        "stray /etc/docker/certs.d/203.0.113.7\n"
    )
    assert status == FAILED
    assert (
        "stray: /etc/docker/certs.d/203.0.113.7 is not read for 203.0.113.7:5000 "
        "images (clients read a folder named exactly 203.0.113.7:5000); remove it "
        "and run trust-clients"
    ) in line


@pytest.mark.parametrize(
    "stray", ["/etc/docker/certs.d/203.0.113.7:443", "/etc/docker/cert.d/203.0.113.7"]
)
def test_stray_folder_beside_working_trust_is_a_note(stray: str) -> None:
    status, line = outcome_for(TRUSTED + f"stray {stray}\n")
    assert status == OK
    assert f"note: stray: {stray} is not read for 203.0.113.7:5000 images" in line
    assert line.endswith("; remove it")


# C06: containerd reads hosts.toml, and only through config_path for the kubelet.

CONTAINERD_CA = f"/etc/containerd/certs.d/{A}/ca.crt"
HOSTS = f"/etc/containerd/certs.d/{A}/hosts.toml"
HOSTS_DIGEST = hashlib.sha256(hosts_toml(A).encode()).hexdigest()
GOOD_CONFIG = b64(
    'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
    '  config_path = "/etc/containerd/certs.d"\n'
)


def containerd_output(hosts: str, config: str, extra: str = "") -> str:
    return (
        f"runtime containerd\nca containerd {CONTAINERD_CA} {OURS}\n"
        f"tls {CONTAINERD_CA} curl 0 200\nhoststoml {HOSTS} {hosts}\n"
        f"file containerd-config /etc/containerd/config.toml {config}\n"
        f"version containerd containerd 1.6.20\n{extra}"
    )


def test_containerd_with_hosts_toml_and_config_path_is_ok() -> None:
    status, line = outcome_for(
        containerd_output(HOSTS_DIGEST, GOOD_CONFIG, "image a:1\npull ctr 0\n")
    )
    assert (status, line) == (OK, "containerd trust; TLS; ctr pull a:1")


def test_host_toml_typo_fails_when_containerd_has_no_other_trust() -> None:
    typo = f"/etc/containerd/certs.d/{A}/host.toml"
    output = containerd_output("-", GOOD_CONFIG, f"hosttypo {typo}\n").replace(
        f"ca containerd {CONTAINERD_CA} {OURS}", f"ca containerd {CONTAINERD_CA} -"
    )
    status, line = outcome_for(output)
    assert status == FAILED
    assert f"{HOSTS}: missing; run trust-clients" in line
    assert (
        f"trust: {typo} is not read by containerd (the name is hosts.toml); remove it "
        "and run trust-clients"
    ) in line


def test_without_hosts_toml_containerd_reads_the_ca_crt_beside_it() -> None:
    # containerd falls back to the folder's *.crt files when hosts.toml is absent.
    typo = f"/etc/containerd/certs.d/{A}/host.toml"
    status, line = outcome_for(
        containerd_output("-", GOOD_CONFIG, f"hosttypo {typo}\nimage a:1\npull ctr 0\n")
    )
    assert status == OK
    assert (
        f"note: trust: {HOSTS}: missing (containerd reads the ca.crt beside it); run "
        "trust-clients"
    ) in line
    assert f"note: trust: {typo} is not read by containerd" in line


def test_a_real_pull_outweighs_a_missing_file() -> None:
    # The OS store (or another file) gives docker its trust: a note, not a failure.
    status, line = outcome_for(
        f"runtime docker\nca docker {DOCKER_CA} -\ntls - curl 0 200\n"
        "image a:1\npull docker 0\n"
    )
    assert status == OK
    assert line == (
        f"TLS; docker pull a:1; note: trust: {DOCKER_CA}: missing, yet docker pull "
        "works (it has another trust); run trust-clients"
    )


def test_containerd_1_without_config_path_fails_for_the_kubelet() -> None:
    status, line = outcome_for(containerd_output(HOSTS_DIGEST, b64("version = 2\n")))
    assert status == FAILED
    assert "has no config_path, so containerd's CRI plugin" in line


def test_containerd_with_cri_disabled_needs_no_config_path() -> None:
    config = b64('disabled_plugins = ["cri"]\n')
    assert outcome_for(containerd_output(HOSTS_DIGEST, config))[0] == OK


# Proxies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_proxy", "covered"),
    [
        ("", False),
        ("*", True),
        ("203.0.113.7", True),
        ("localhost, 203.0.113.7 ,.corp", True),
        ("203.0.113.0/24", True),
        ("203.0.112.0/24", False),
        ("203.0.113.7:5000", True),
        ("203.0.113.7:443", False),
        ("203.0.113.70", False),
        (".example.com,example.org", False),
    ],
)
def test_no_proxy_matches_like_go(no_proxy: str, covered: bool) -> None:
    assert no_proxy_covers(no_proxy, "203.0.113.7", 5000) is covered


def test_no_proxy_for_ipv6_and_loopback() -> None:
    assert no_proxy_covers("[2001:db8::5]:5000", "2001:db8::5", 5000)
    assert no_proxy_covers("2001:db8::/32", "2001:db8::5", 5000)
    assert not no_proxy_covers("2001:db9::/32", "2001:db8::5", 5000)
    assert no_proxy_covers("", "127.0.0.1", 5000)


def test_systemd_environment_lines() -> None:
    text = (
        "[Service]\nEnvironment=FOO=1\nEnvironment=\n"
        'Environment="HTTPS_PROXY=http://p:3128" "NO_PROXY=localhost,10.0.0.0/8"\n'
    )
    assert systemd_environment(text) == {
        "HTTPS_PROXY": "http://p:3128",
        "NO_PROXY": "localhost,10.0.0.0/8",
    }


def test_redact_proxy_hides_the_password() -> None:
    assert redact_proxy("http://user:secret@p:3128") == "http://***@p:3128"
    assert redact_proxy("http://p:3128") == "http://p:3128"


def proxied(files: str) -> tuple[str, str]:
    return outcome_for(TRUSTED + "image a:1\npull docker 0\n" + files)


def test_daemon_json_proxy_without_no_proxy_fails() -> None:
    daemon_json = '{"proxies": {"https-proxy": "http://u:pw@10.9.9.9:3128"}}'
    status, line = proxied(
        f"file docker-json /etc/docker/daemon.json {b64(daemon_json)}\n"
    )
    assert status == FAILED
    assert line == (
        "proxy: dockerd would send 203.0.113.7:5000 through proxy "
        "http://***@10.9.9.9:3128 (set in /etc/docker/daemon.json); no-proxy (unset) "
        'does not cover 203.0.113.7; add 203.0.113.7 to "proxies": {"no-proxy"} in '
        "/etc/docker/daemon.json, then systemctl restart docker"
    )


def test_daemon_json_no_proxy_covering_the_registry_passes() -> None:
    daemon_json = (
        '{"proxies": {"https-proxy": "http://p:3128", "no-proxy": "203.0.113.0/24"}}'
    )
    status, _ = proxied(
        f"file docker-json /etc/docker/daemon.json {b64(daemon_json)}\n"
    )
    assert status == OK


def test_http_proxy_alone_does_not_catch_a_tls_registry() -> None:
    daemon_json = '{"proxies": {"http-proxy": "http://p:3128"}}'
    status, _ = proxied(
        f"file docker-json /etc/docker/daemon.json {b64(daemon_json)}\n"
    )
    assert status == OK


def test_systemd_drop_in_proxy_for_containerd_fails_with_the_unit_fix() -> None:
    drop_in = (
        '[Service]\nEnvironment="HTTPS_PROXY=http://p:3128" "NO_PROXY=localhost"\n'
    )
    path = "/etc/systemd/system/containerd.service.d/http-proxy.conf"
    status, line = proxied(f"file containerd {path} {b64(drop_in)}\n")
    assert status == FAILED
    assert (
        f"containerd would send {A} through proxy http://p:3128 (set in {path})" in line
    )
    assert (
        f"add 203.0.113.7 to NO_PROXY in {path}, then systemctl daemon-reload && "
        "systemctl restart containerd"
    ) in line


def test_later_drop_in_wins() -> None:
    check = ClientCheck()
    first = 'Environment="HTTPS_PROXY=http://p:3128"\n'
    second = 'Environment="NO_PROXY=203.0.113.7"\n'
    check.files = [
        ("docker", "/etc/systemd/system/docker.service.d/20-no.conf", second),
        ("docker", "/etc/systemd/system/docker.service.d/10-proxy.conf", first),
    ]
    (setting,), problems = proxy_settings(check)
    assert (setting.https_proxy, setting.no_proxy, problems) == (
        "http://p:3128",
        "203.0.113.7",
        [],
    )
    lines = "".join(f"file {d} {p} {b64(t)}\n" for d, p, t in check.files)
    assert proxied(lines)[0] == OK


def test_the_running_dockerd_proxy_is_reported() -> None:
    status, line = proxied(f"proxylive docker {b64('http://p:3128|localhost')}\n")
    assert status == FAILED
    assert line.startswith("proxy: the running dockerd sends 203.0.113.7:5000 through")


def test_a_broken_daemon_json_fails() -> None:
    status, line = proxied(f"file docker-json /etc/docker/daemon.json {b64('{')}\n")
    assert status == FAILED
    assert line.startswith("config: /etc/docker/daemon.json is not valid JSON")
