"""Each runtime's trust files and config edits, checked by parsing what we write.

containerd's own parser (``containerd config dump``) reads our config.toml, so the key
is proven to sit in the section containerd actually uses.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import tomlkit
from ruamel.yaml import YAML

from tasks.runtimes import (
    CONTAINERD_CERTS,
    ConfigError,
    buildkit_config,
    ca_file,
    containerd_config,
    hosts_toml,
    registries_yaml,
    safe_file_name,
)

AUTHORITY = "203.0.113.7:5000"


def load_yaml(text: str) -> dict:  # type: ignore[type-arg]
    return YAML(typ="safe").load(text)


@pytest.mark.parametrize(
    ("runtime", "path"),
    [
        ("docker", "/etc/docker/certs.d/203.0.113.7:5000/ca.crt"),
        ("podman", "/etc/containers/certs.d/203.0.113.7:5000/ca.crt"),
        ("containerd", "/etc/containerd/certs.d/203.0.113.7:5000/ca.crt"),
        ("k3s", "/etc/rancher/k3s/certs.d/203.0.113.7:5000/ca.crt"),
        ("rke2", "/etc/rancher/rke2/certs.d/203.0.113.7:5000/ca.crt"),
        ("buildkit", "/etc/buildkit/certs.d/203.0.113.7:5000/ca.crt"),
        ("system", "/usr/local/share/ca-certificates/ip-registry-203.0.113.7_5000.crt"),
    ],
)
def test_ca_file_per_runtime(runtime: str, path: str) -> None:
    assert ca_file(runtime, AUTHORITY) == path


def test_system_store_paths_per_family_and_ipv6() -> None:
    assert ca_file("system", "[2001:db8::5]:5000", "redhat") == (
        "/etc/pki/ca-trust/source/anchors/ip-registry-2001_db8__5_5000.crt"
    )
    assert safe_file_name("[2001:db8::5]:443") == "2001_db8__5_443"


def test_hosts_toml_names_server_and_ca() -> None:
    document = tomlkit.parse(hosts_toml("[2001:db8::5]:5000"))
    assert document["server"] == "https://[2001:db8::5]:5000"
    host = document["host"]["https://[2001:db8::5]:5000"]
    assert host["ca"] == "/etc/containerd/certs.d/[2001:db8::5]:5000/ca.crt"
    assert list(host["capabilities"]) == ["pull", "resolve", "push"]


# containerd config.toml -----------------------------------------------------------


def test_containerd_1x_without_config_gets_a_version_2_file() -> None:
    edit = containerd_config(None, major=1)
    assert edit.text is not None
    document = tomlkit.parse(edit.text)
    assert document["version"] == 2
    registry = document["plugins"]["io.containerd.grpc.v1.cri"]["registry"]
    assert registry["config_path"] == CONTAINERD_CERTS


def test_containerd_2x_without_config_needs_nothing() -> None:
    # containerd 2 reads /etc/containerd/certs.d by default.
    assert containerd_config(None, major=2).text is None


def test_containerd_version_3_file_gets_the_2x_section() -> None:
    edit = containerd_config(
        'version = 3\n[plugins."io.containerd.cri.v1.images"]\n', 2
    )
    assert edit.text is not None
    registry = tomlkit.parse(edit.text)["plugins"]["io.containerd.cri.v1.images"][
        "registry"
    ]
    assert registry["config_path"] == CONTAINERD_CERTS
    assert "io.containerd.grpc.v1.cri" not in edit.text


def test_containerd_edit_keeps_everything_else() -> None:
    current = (
        "# our comment\nversion = 2\nroot = '/data/containerd'\n"
        '[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"\n'
        '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = ""\n'
    )
    edit = containerd_config(current, major=1)
    assert edit.text is not None
    assert "# our comment" in edit.text
    document = tomlkit.parse(edit.text)
    assert document["root"] == "/data/containerd"
    cri = document["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "pause:3.9"
    assert cri["registry"]["config_path"] == CONTAINERD_CERTS
    # The second run finds nothing to do.
    assert containerd_config(edit.text, major=1).text is None


def test_containerd_with_cri_disabled_is_left_alone() -> None:
    edit = containerd_config('disabled_plugins = ["cri"]\n', major=1)
    assert edit.text is None
    assert edit.note is not None and "CRI plugin is disabled" in edit.note


def test_containerd_with_legacy_mirrors_is_refused() -> None:
    current = (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors'
        '."docker.io"]\n  endpoint = ["https://mirror.example"]\n'
    )
    with pytest.raises(ConfigError, match=r"deprecated registry\.mirrors"):
        containerd_config(current, major=1)


def test_containerd_with_another_config_path_gets_a_note() -> None:
    current = (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/srv/hosts"\n'
    )
    edit = containerd_config(current, major=1)
    assert edit.text is None
    assert edit.note is not None and "/srv/hosts" in edit.note


def test_containerd_invalid_toml_is_named() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        containerd_config("version = = 2\n", major=1)


@pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd missing")
def test_real_containerd_reads_config_path_where_we_put_it(tmp_path: Path) -> None:
    edit = containerd_config(None, major=1)
    assert edit.text is not None
    config = tmp_path / "config.toml"
    config.write_text(edit.text)
    dump = subprocess.run(
        ["containerd", "--config", str(config), "config", "dump"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f'config_path = "{CONTAINERD_CERTS}"' in dump.stdout


# k3s / rke2 registries.yaml -------------------------------------------------------


EXISTING = """\
# Mirrors for the team
mirrors:
  docker.io:
    endpoint:
      - "https://mirror.example:5000"
configs:
  "mirror.example:5000":
    auth:
      username: ci
      password: secret
"""


def test_registries_yaml_merge_keeps_other_entries_and_comments() -> None:
    edit = registries_yaml(EXISTING, "k3s", AUTHORITY)
    assert edit.text is not None
    assert "# Mirrors for the team" in edit.text
    document = load_yaml(edit.text)
    assert document["mirrors"]["docker.io"]["endpoint"] == [
        "https://mirror.example:5000"
    ]
    assert document["configs"]["mirror.example:5000"]["auth"]["username"] == "ci"
    assert document["mirrors"][AUTHORITY]["endpoint"] == [f"https://{AUTHORITY}"]
    assert document["configs"][AUTHORITY]["tls"]["ca_file"] == (
        "/etc/rancher/k3s/certs.d/203.0.113.7:5000/ca.crt"
    )
    assert registries_yaml(edit.text, "k3s", AUTHORITY).text is None


def test_registries_yaml_key_is_address_and_port() -> None:
    # C07: a key without the port does not apply to ADDRESS:PORT images.
    edit = registries_yaml(None, "rke2", AUTHORITY)
    assert edit.text is not None
    document = load_yaml(edit.text)
    assert list(document["configs"]) == [AUTHORITY]
    assert document["configs"][AUTHORITY]["tls"]["ca_file"].startswith(
        "/etc/rancher/rke2/"
    )


def test_registries_yaml_keeps_existing_settings_of_our_entry() -> None:
    current = f'configs:\n  "{AUTHORITY}":\n    auth:\n      username: bot\n'
    edit = registries_yaml(current, "k3s", AUTHORITY)
    assert edit.text is not None
    entry = load_yaml(edit.text)["configs"][AUTHORITY]
    assert entry["auth"]["username"] == "bot"
    assert "ca_file" in entry["tls"]


def test_registries_yaml_remove_restores_the_original() -> None:
    merged = registries_yaml(EXISTING, "k3s", AUTHORITY).text
    edit = registries_yaml(merged, "k3s", AUTHORITY, remove=True)
    assert edit.text is not None
    assert load_yaml(edit.text) == load_yaml(EXISTING)
    assert registries_yaml(edit.text, "k3s", AUTHORITY, remove=True).text is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mirrors: [\n", "not valid YAML"),
        ("- a\n", "top level is not a mapping"),
        ("configs: 5\n", "configs is not a mapping"),
    ],
)
def test_registries_yaml_refuses_what_it_cannot_merge(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        registries_yaml(text, "k3s", AUTHORITY)
    assert "\n" not in str(caught.value)


# A host's broken config fails that host on one line, never the whole run.
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('version = "two"\n', "its version is 'two', not a number"),
        ("version = true\n", "its version is True, not a number"),
        ("version = 2\nplugins = 5\n", "its plugins is not a table"),
        (
            'version = 2\n[plugins]\n"io.containerd.grpc.v1.cri" = 1\n',
            "its plugins.'io.containerd.grpc.v1.cri' is not a table",
        ),
        ("version = 2\ndisabled_plugins = 'cri'\n", "disabled_plugins is not a list"),
    ],
)
def test_containerd_config_of_wrong_types_is_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        containerd_config(text, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("registry = 5\n", "its registry is not a table"),
        (f'[registry]\n"{AUTHORITY}" = 5\n', f'registry."{AUTHORITY}" is not a table'),
        (f'[registry."{AUTHORITY}"]\nca = 5\n', "neither a path nor a list"),
    ],
)
def test_buildkit_config_of_wrong_types_is_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        buildkit_config(text, AUTHORITY)


def test_buildkit_single_ca_path_is_kept_beside_ours() -> None:
    current = f'[registry."{AUTHORITY}"]\nca = "/etc/ssl/team.pem"\n'
    edit = buildkit_config(current, AUTHORITY)
    assert edit.text is not None
    assert list(tomlkit.parse(edit.text)["registry"][AUTHORITY]["ca"]) == [
        "/etc/ssl/team.pem",
        "/etc/buildkit/certs.d/203.0.113.7:5000/ca.crt",
    ]


# BuildKit buildkitd.toml ----------------------------------------------------------


def test_buildkit_merge_and_remove() -> None:
    current = 'debug = true\n[registry."docker.io"]\n  mirrors = ["mirror.example"]\n'
    edit = buildkit_config(current, AUTHORITY)
    assert edit.text is not None
    document = tomlkit.parse(edit.text)
    assert document["debug"] is True
    assert list(document["registry"]["docker.io"]["mirrors"]) == ["mirror.example"]
    assert list(document["registry"][AUTHORITY]["ca"]) == [
        "/etc/buildkit/certs.d/203.0.113.7:5000/ca.crt"
    ]
    assert buildkit_config(edit.text, AUTHORITY).text is None
    removed = buildkit_config(edit.text, AUTHORITY, remove=True).text
    assert removed is not None
    assert tomlkit.parse(removed) == tomlkit.parse(current)
