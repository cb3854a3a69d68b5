"""Certificates: every extension, its criticality, and the state folder's promises."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasks import pki
from tasks.errors import InputError, StateError

ADDRESS = "203.0.113.7"


def extension(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    key = pki.generate_key()
    return pki.Issued(pki.issue_ca(key, [ADDRESS, "2001:db8::5"]), key, None)


@pytest.fixture(scope="module")
def server(ca: pki.Issued) -> x509.Certificate:
    key = pki.generate_key()
    return pki.issue_server_cert(ca.cert, ca.key, key, [ADDRESS, "2001:db8::5"])


def test_ca_is_a_pathlen_zero_critical_ca(ca: pki.Issued) -> None:
    basic = extension(ca.cert, x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is True
    assert basic.value.path_length == 0


def test_ca_key_usage_is_cert_and_crl_signing_only(ca: pki.Issued) -> None:
    usage = extension(ca.cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert not usage.value.key_encipherment


def test_ca_has_subject_key_identifier(ca: pki.Issued) -> None:
    ski = extension(ca.cert, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())


def test_ca_is_name_constrained_to_the_registry(ca: pki.Issued) -> None:
    constraints = extension(ca.cert, x509.NameConstraints)
    assert constraints.critical
    permitted = constraints.value.permitted_subtrees
    assert x509.IPAddress(ipaddress.ip_network(f"{ADDRESS}/32")) in permitted
    assert x509.IPAddress(ipaddress.ip_network("2001:db8::5/128")) in permitted
    # No names of ours: every DNS name is excluded.
    assert x509.DNSName("") in constraints.value.excluded_subtrees


def test_ca_without_constraints_when_asked() -> None:
    key = pki.generate_key()
    cert = pki.issue_ca(key, [ADDRESS], constrain=False)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.NameConstraints)


def test_two_cas_never_share_a_subject() -> None:
    key = pki.generate_key()
    first = pki.issue_ca(key, [ADDRESS])
    second = pki.issue_ca(key, [ADDRESS])
    assert first.subject != second.subject


def test_server_cert_holds_ip_entries_not_dns(server: x509.Certificate) -> None:
    san = extension(server, x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(ADDRESS),
        ipaddress.ip_address("2001:db8::5"),
    ]
    assert san.value.get_values_for_type(x509.DNSName) == []


def test_server_cert_does_not_rely_on_common_name(server: x509.Certificate) -> None:
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []


def test_server_cert_names_become_dns_entries(ca: pki.Issued) -> None:
    key = pki.generate_key()
    ca_cert = pki.issue_ca(ca.key, [ADDRESS, "registry.example"])
    cert = pki.issue_server_cert(ca_cert, ca.key, key, [ADDRESS, "registry.example"])
    san = extension(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["registry.example"]


def test_server_cert_extensions(ca: pki.Issued, server: x509.Certificate) -> None:
    basic = extension(server, x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = extension(server, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_encipherment  # ECDSA keys do not encipher
    eku = extension(server, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = extension(server, x509.AuthorityKeyIdentifier)
    ski = extension(ca.cert, x509.SubjectKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest
    assert server.issuer == ca.cert.subject
    assert pki.is_signed_by(server, ca.cert)


def test_rsa_server_key_may_encipher(ca: pki.Issued) -> None:
    key = pki.generate_key("rsa-2048")
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = pki.issue_server_cert(ca.cert, ca.key, key, [ADDRESS])
    assert extension(cert, x509.KeyUsage).value.key_encipherment


def test_default_keys_are_p256(ca: pki.Issued) -> None:
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert ca.key.curve.name == "secp256r1"


def test_validity_starts_in_the_past_and_is_capped(ca: pki.Issued) -> None:
    now = dt.datetime.now(dt.UTC)
    key = pki.generate_key()
    cert = pki.issue_server_cert(ca.cert, ca.key, key, [ADDRESS], now=now)
    assert cert.not_valid_before_utc <= now - dt.timedelta(minutes=30)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=pki.DEFAULT_SERVER_DAYS)


def test_server_cert_never_outlives_its_ca() -> None:
    key = pki.generate_key()
    short_ca = pki.issue_ca(key, [ADDRESS], days=10)
    cert = pki.issue_server_cert(short_ca, key, pki.generate_key(), [ADDRESS])
    assert cert.not_valid_after_utc <= short_ca.not_valid_after_utc


@pytest.mark.parametrize(
    ("addresses", "refused"),
    [
        ([ADDRESS], []),
        (["203.0.113.8"], ["203.0.113.8"]),
        (["2001:db8::5"], []),
        (["2001:db8::6"], ["2001:db8::6"]),
        (["registry.example"], ["registry.example"]),
    ],
)
def test_unpermitted_addresses(
    ca: pki.Issued, addresses: list[str], refused: list[str]
) -> None:
    assert pki.unpermitted_addresses(ca.cert, addresses) == refused


def openssl_verify(
    tmp_path: Path, ca_cert: x509.Certificate, cert: x509.Certificate, ip: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "ca.pem").write_bytes(pki.cert_pem(ca_cert))
    (tmp_path / "server.pem").write_bytes(pki.cert_pem(cert))
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), "-verify_ip", ip,
         str(tmp_path / "server.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_openssl_verifies_the_ip_against_our_ca(
    tmp_path: Path, ca: pki.Issued, server: x509.Certificate
) -> None:
    # C01: the IP must be an IP SAN that a real verifier accepts.
    assert openssl_verify(tmp_path, ca.cert, server, ADDRESS).returncode == 0
    assert openssl_verify(tmp_path, ca.cert, server, "2001:db8::5").returncode == 0


def test_openssl_refuses_another_ip(
    tmp_path: Path, ca: pki.Issued, server: x509.Certificate
) -> None:
    result = openssl_verify(tmp_path, ca.cert, server, "203.0.113.99")
    assert result.returncode != 0
    assert "IP address mismatch" in result.stdout + result.stderr


def test_name_constraints_stop_a_leaked_ca_key(tmp_path: Path, ca: pki.Issued) -> None:
    # A certificate for another address, signed with the CA key, is still refused.
    forged = pki.issue_server_cert(
        ca.cert, ca.key, pki.generate_key(), ["198.51.100.1"]
    )
    result = openssl_verify(tmp_path, ca.cert, forged, "198.51.100.1")
    assert result.returncode != 0
    assert "subtree violation" in result.stdout + result.stderr


def test_server_cert_problem(ca: pki.Issued, server: x509.Certificate) -> None:
    addresses = [ADDRESS, "2001:db8::5"]
    assert pki.server_cert_problem(server, ca.cert, addresses) is None
    assert "differ" in (pki.server_cert_problem(server, ca.cert, [ADDRESS]) or "")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=380)
    assert "expires" in (
        pki.server_cert_problem(server, ca.cert, addresses, later) or ""
    )
    other_key = pki.generate_key()
    other_ca = pki.issue_ca(other_key, addresses)
    assert "not signed" in (pki.server_cert_problem(server, other_ca, addresses) or "")


# The state folder ----------------------------------------------------------------------


def test_state_folder_makes_ca_once_with_private_modes(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    first = state.ensure_ca([ADDRESS])
    assert first.change == "created a new CA"
    assert stat.S_IMODE(state.ca_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    second = state.ensure_ca([ADDRESS])
    assert second.change is None
    assert pki.fingerprint(second.cert) == pki.fingerprint(first.cert)


def test_server_cert_reused_until_addresses_change(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    ca = state.ensure_ca([ADDRESS, "203.0.113.8"])
    first = state.ensure_server_cert(ca, [ADDRESS])
    assert first.change and stat.S_IMODE(state.server_key_path.stat().st_mode) == 0o600
    again = state.ensure_server_cert(ca, [ADDRESS])
    assert again.change is None
    assert pki.fingerprint(again.cert) == pki.fingerprint(first.cert)
    moved = state.ensure_server_cert(ca, [ADDRESS, "203.0.113.8"])
    assert moved.change and "differ" in moved.change
    assert pki.cert_addresses(moved.cert) == [ADDRESS, "203.0.113.8"]


def test_options_for_a_new_ca_must_describe_an_existing_one(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    made = state.ensure_ca([ADDRESS], key_type="ecdsa-p384", days=1000)
    same = state.ensure_ca([ADDRESS], key_type="ecdsa-p384", days=1000, constrain=True)
    assert same.change is None
    assert pki.fingerprint(same.cert) == pki.fingerprint(made.cert)
    assert state.ensure_ca([ADDRESS]).change is None  # no option: whatever it is

    with pytest.raises(InputError) as caught:
        state.ensure_ca([ADDRESS], key_type="rsa-2048", days=90, constrain=False)
    message = str(caught.value)
    assert "--key-type rsa-2048 (its key is ecdsa-p384)" in message
    assert "--ca-days 90 (it is valid 1000 days)" in message
    assert "--no-name-constraints (it is name-constrained)" in message
    assert message.endswith("replace the CA with rotate-ca")
    assert pki.fingerprint(state.read_ca()[0]) == pki.fingerprint(made.cert)


def test_server_cert_reissued_for_another_key_type_or_lifetime(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    ca = state.ensure_ca([ADDRESS])
    first = state.ensure_server_cert(ca, [ADDRESS], days=90)
    assert pki.lifetime_days(first.cert) == 90
    assert state.ensure_server_cert(ca, [ADDRESS]).change is None
    assert state.ensure_server_cert(ca, [ADDRESS], days=90).change is None

    longer = state.ensure_server_cert(ca, [ADDRESS], days=200)
    assert longer.change and "--server-days 200" in longer.change
    assert pki.lifetime_days(longer.cert) == 200
    rsa_cert = state.ensure_server_cert(ca, [ADDRESS], key_type="rsa-2048")
    assert rsa_cert.change and "--key-type rsa-2048" in rsa_cert.change
    assert pki.key_type_of(rsa_cert.key) == "rsa-2048"
    assert state.ensure_server_cert(ca, [ADDRESS], key_type="rsa-2048").change is None


def test_server_cert_clipped_to_its_ca_is_not_reissued_for_a_longer_lifetime(
    tmp_path: Path,
) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    ca = state.ensure_ca([ADDRESS], days=30)
    first = state.ensure_server_cert(ca, [ADDRESS], days=397)
    assert first.cert.not_valid_after_utc == ca.cert.not_valid_after_utc
    assert state.ensure_server_cert(ca, [ADDRESS], days=397).change is None


def test_missing_ca_key_stops_instead_of_replacing(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    state.ensure_ca([ADDRESS])
    state.ca_key_path.unlink()
    with pytest.raises(StateError, match=r"ca.key: missing"):
        state.ensure_ca([ADDRESS])


def test_missing_ca_beside_server_cert_stops(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    ca = state.ensure_ca([ADDRESS])
    state.ensure_server_cert(ca, [ADDRESS])
    state.ca_key_path.unlink()
    state.ca_cert_path.unlink()
    with pytest.raises(StateError, match=r"restore ca.crt and ca.key"):
        state.ensure_ca([ADDRESS])


def test_mismatched_ca_pair_stops(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    state.ensure_ca([ADDRESS])
    state.ca_key_path.write_bytes(pki.key_pem(pki.generate_key()))
    with pytest.raises(StateError, match="does not belong"):
        state.ensure_ca([ADDRESS])


def test_address_outside_constraints_asks_for_rotation(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    state.ensure_ca([ADDRESS])
    with pytest.raises(StateError, match="rotate-ca"):
        state.ensure_ca([ADDRESS, "198.51.100.4"])


def test_damaged_certificate_is_named(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    state.ensure_ca([ADDRESS])
    state.ca_cert_path.write_text("not a certificate")
    with pytest.raises(StateError, match=r"ca.crt: cannot read the certificate"):
        state.ensure_ca([ADDRESS])


def test_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    other = pki.StateFolder(tmp_path / "pki")
    with state.locked(), pytest.raises(StateError, match="another run"), other.locked():
        pass


def test_a_folder_refuses_to_vouch_for_another_registry(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    both = [ADDRESS, "2001:db8::7"]
    state.ensure_server_cert(state.ensure_ca(both), both)
    state.check_serves(ADDRESS, "--registry")
    state.check_serves("2001:db8:0::7", "registry.address")  # the same IPv6 address

    # The name constraints speak first: this CA cannot sign for the other address.
    with pytest.raises(
        StateError, match=r"ca.crt: this CA may only sign for"
    ) as caught:
        state.check_serves("203.0.113.99", "--registry")
    assert "not 203.0.113.99 (--registry); pass --pki-dir" in str(caught.value)

    # Without constraints, the server certificate says which registry it serves.
    loose = pki.StateFolder(tmp_path / "loose")
    ca = loose.ensure_ca([ADDRESS], constrain=False)
    loose.ensure_server_cert(ca, [ADDRESS])
    with pytest.raises(StateError, match=r"server.crt: the registry of this folder"):
        loose.check_serves("203.0.113.99", "registry.address")


def test_key_and_certificate_change_together_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    ca = state.ensure_ca([ADDRESS])
    state.ensure_server_cert(ca, [ADDRESS])
    key_before = state.server_key_path.read_bytes()
    cert_before = state.server_cert_path.read_bytes()

    # The certificate's rename fails after the key's went through (an immutable
    # file, a full disk): the key comes back, and no temporary file stays.
    real_replace = os.replace

    def failing_replace(source: str, target: os.PathLike[str] | str) -> None:
        if Path(target) == state.server_cert_path:
            raise PermissionError(1, "Operation not permitted")
        real_replace(source, target)

    monkeypatch.setattr(pki.os, "replace", failing_replace)
    with pytest.raises(StateError, match="cannot write the server certificate"):
        state.ensure_server_cert(ca, [ADDRESS], force=True)
    monkeypatch.undo()
    assert state.server_key_path.read_bytes() == key_before
    assert state.server_cert_path.read_bytes() == cert_before
    assert sorted(p.name for p in state.path.iterdir() if p.name.startswith(".s")) == []
    assert stat.S_IMODE(state.server_key_path.stat().st_mode) == 0o600
    assert state.ensure_server_cert(ca, [ADDRESS]).change is None  # still a pair


def test_an_immutable_certificate_leaves_the_pair_alone(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    ca = state.ensure_ca([ADDRESS])
    state.ensure_server_cert(ca, [ADDRESS])
    key_before = state.server_key_path.read_bytes()
    if subprocess.run(["chattr", "+i", str(state.server_cert_path)]).returncode:
        pytest.skip("chattr +i needs root and a file system that has it")
    try:
        with pytest.raises(StateError, match=r"Operation not permitted"):
            state.ensure_server_cert(ca, [ADDRESS], force=True)
    finally:
        subprocess.run(["chattr", "-i", str(state.server_cert_path)], check=True)
    assert state.server_key_path.read_bytes() == key_before
    assert state.ensure_server_cert(ca, [ADDRESS]).change is None


def test_a_loose_key_mode_is_put_back_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    state.ensure_ca([ADDRESS])
    state.ca_key_path.chmod(0o644)
    with caplog.at_level("WARNING", logger="tasks"):
        assert state.ensure_ca([ADDRESS]).change is None
    assert stat.S_IMODE(state.ca_key_path.stat().st_mode) == 0o600
    (record,) = caplog.records
    assert f"{state.ca_key_path} was readable by others (mode 0644)" in (
        record.getMessage()
    )


def test_trust_variants_remember_what_earlier_rotations_wrote(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    first = pki.cert_pem(state.ensure_ca([ADDRESS]).cert)
    assert state.trust_variants() == [first]

    second = pki.cert_pem(state.begin_rotation([ADDRESS]).cert)
    assert state.trust_variants() == [first, second, first + second]
    state.mark_switched()
    state.finish_rotation()
    # What trust-clients wrote during that rotation is still known as ours.
    assert state.trust_variants() == [first, first + second, second]

    third = pki.cert_pem(state.begin_rotation([ADDRESS]).cert)
    state.mark_switched()
    state.finish_rotation()
    variants = state.trust_variants()
    assert variants[-1] == third
    assert {first + second, second + third, first, second} <= set(variants)


def test_a_loose_key_that_cannot_be_tightened_is_one_line(tmp_path: Path) -> None:
    state = pki.StateFolder(tmp_path / "pki")
    state.ensure_ca([ADDRESS])
    state.ca_key_path.chmod(0o644)
    if subprocess.run(["chattr", "+i", str(state.ca_key_path)]).returncode:
        pytest.skip("chattr +i needs root and a file system that has it")
    try:
        with pytest.raises(
            StateError, match=r"ca.key: readable by others \(mode 0644\)"
        ):
            state.ensure_ca([ADDRESS])
    finally:
        subprocess.run(["chattr", "-i", str(state.ca_key_path)], check=True)
