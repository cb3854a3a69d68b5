"""The private CA and the registry's server certificate, kept on the control machine.

Plain functions issue and inspect certificates with the ``cryptography`` library; the
``StateFolder`` keeps them on disk (private keys 0600, the folder 0700), reuses one CA
for every later run and never replaces it silently.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import itertools
import json
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .addresses import parse_ip
from .errors import InputError, StateError

log = logging.getLogger(__name__)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096")
DEFAULT_KEY_TYPE = "ecdsa-p256"
DEFAULT_CA_DAYS = 3650
#: Browsers' and Apple's ceiling for a server certificate; Docker itself has none.
DEFAULT_SERVER_DAYS = 397
#: Reissue the server certificate when it has fewer days left than this.
RENEW_DAYS = 30
#: Start validity a little in the past, so a host whose clock runs behind accepts a
#: certificate made a minute ago.
BACKDATE = dt.timedelta(hours=1)
ORGANIZATION = "ip-registry"


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Make a new private key of ``key_type`` (one of ``KEY_TYPES``)."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-") and key_type in KEY_TYPES:
        return rsa.generate_private_key(
            public_exponent=65537, key_size=int(key_type[4:])
        )
    raise ValueError(
        f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}"
    )


def key_type_of(key: PrivateKey) -> str:
    """The ``KEY_TYPES`` name of an existing key."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa-{key.key_size}"
    return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(
        key.curve.name, key.curve.name
    )


def lifetime_days(cert: x509.Certificate) -> int:
    """How many days the certificate was issued for."""
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).days


def is_name_constrained(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return False
    return True


def general_names(addresses: Sequence[str]) -> list[x509.GeneralName]:
    """subjectAltName entries: IP entries for addresses, DNS entries only for names."""
    names: list[x509.GeneralName] = []
    for address in addresses:
        ip = parse_ip(address)
        names.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(address))
    return names


def name_constraints(addresses: Sequence[str]) -> x509.NameConstraints:
    """Constraints that permit only ``addresses`` and exclude every other name.

    A permitted subtree limits only names of its own kind, so each kind with no entry of
    ours (DNS names, IPv4, IPv6) is excluded outright; the empty DNS name matches every
    name in both Go's and OpenSSL's checks.
    """
    permitted: list[x509.GeneralName] = []
    for address in addresses:
        ip = parse_ip(address)
        if ip is None:
            permitted.append(x509.DNSName(address))
        else:
            permitted.append(x509.IPAddress(ipaddress.ip_network(ip)))
    excluded: list[x509.GeneralName] = []
    if not any(isinstance(name, x509.DNSName) for name in permitted):
        excluded.append(x509.DNSName(""))
    for version, everything in ((4, "0.0.0.0/0"), (6, "::/0")):
        if not any(
            isinstance(name, x509.IPAddress) and name.value.version == version
            for name in permitted
        ):
            excluded.append(x509.IPAddress(ipaddress.ip_network(everything)))
    return x509.NameConstraints(
        permitted_subtrees=permitted or None, excluded_subtrees=excluded or None
    )


def issue_ca(
    key: PrivateKey,
    addresses: Sequence[str],
    *,
    days: int = DEFAULT_CA_DAYS,
    constrain: bool = True,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Self-sign a CA for a registry at ``addresses``.

    The subject carries the date and a random tag, so two CAs (the old and the new one
    during a rotation) never share a name.
    """
    now = now or dt.datetime.now(dt.UTC)
    tag = secrets.token_hex(4)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Registry CA {now:%Y-%m-%d} {tag}"
            ),
        ]
    )
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )
    if constrain:
        builder = builder.add_extension(name_constraints(addresses), critical=True)
    return builder.sign(key, hashes.SHA256())


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    addresses: Sequence[str],
    *,
    days: int = DEFAULT_SERVER_DAYS,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign a TLS server certificate for ``addresses``.

    Clients match the address only against subjectAltName. The subject has no common
    name on purpose: OpenSSL checks a common name that looks like a host name against
    the CA's name constraints, and an IP written there would break verification.
    """
    if not addresses:
        raise ValueError("a server certificate needs at least one address")
    now = now or dt.datetime.now(dt.UTC)
    not_after = min(
        now - BACKDATE + dt.timedelta(days=days), ca_cert.not_valid_after_utc
    )
    public_key = key.public_key()
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        authority_key_id = (
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
        )
    except x509.ExtensionNotFound:
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()  # type: ignore[arg-type]
        )
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "registry"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(general_names(addresses)), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
        .add_extension(authority_key_id, critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def cert_addresses(cert: x509.Certificate) -> list[str]:
    """The names in the certificate's subjectAltName ([] when it has none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = [ip.compressed for ip in san.get_values_for_type(x509.IPAddress)]
    return names + san.get_values_for_type(x509.DNSName)


def unpermitted_addresses(
    ca_cert: x509.Certificate, addresses: Sequence[str]
) -> list[str]:
    """The addresses the CA's name constraints forbid it to sign for."""
    try:
        constraints = ca_cert.extensions.get_extension_for_class(
            x509.NameConstraints
        ).value
    except x509.ExtensionNotFound:
        return []
    permitted = constraints.permitted_subtrees or []
    excluded = constraints.excluded_subtrees or []
    return [
        address
        for address in addresses
        if not _name_allowed(general_names([address])[0], permitted, excluded)
    ]


def permitted_addresses(ca_cert: x509.Certificate) -> list[str]:
    """The names and networks a name-constrained CA may sign for."""
    constraints = ca_cert.extensions.get_extension_for_class(x509.NameConstraints)
    subtrees = constraints.value.permitted_subtrees or []
    return [str(subtree.value) for subtree in subtrees]


def same_address(a: str, b: str) -> bool:
    """Whether two addresses or names are the same (IPs compared as numbers)."""
    ip_a, ip_b = parse_ip(a), parse_ip(b)
    if ip_a is not None or ip_b is not None:
        return ip_a == ip_b
    return a.lower().rstrip(".") == b.lower().rstrip(".")


def _name_allowed(
    name: x509.GeneralName,
    permitted: Sequence[x509.GeneralName],
    excluded: Sequence[x509.GeneralName],
) -> bool:
    def matches(subtree: x509.GeneralName) -> bool:
        if isinstance(name, x509.IPAddress) and isinstance(subtree, x509.IPAddress):
            network = subtree.value
            address = name.value
            if not isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
                return False
            return address.version == network.version and address in network
        if isinstance(name, x509.DNSName) and isinstance(subtree, x509.DNSName):
            base = subtree.value.lower().lstrip(".")
            value = name.value.lower()
            return not base or value == base or value.endswith("." + base)
        return False

    if any(matches(subtree) for subtree in excluded):
        return False
    same_kind = [s for s in permitted if type(s) is type(name)]
    return not same_kind or any(matches(subtree) for subtree in same_kind)


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    def encoded(public_key: object) -> bytes:
        return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )

    return encoded(cert.public_key()) == encoded(key.public_key())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as OpenSSL prints it (``AB:CD:...``)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def days_left(cert: x509.Certificate, now: dt.datetime | None = None) -> int:
    """Whole days until the certificate expires (negative once it has)."""
    now = now or dt.datetime.now(dt.UTC)
    return (cert.not_valid_after_utc - now).days


def is_signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Tell whether ``ca_cert``'s key signed ``cert``."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def server_cert_problem(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    addresses: Sequence[str],
    now: dt.datetime | None = None,
) -> str | None:
    """Why ``cert`` must be reissued for ``addresses``, or None if it is still good."""
    if not is_signed_by(cert, ca_cert):
        return "it was not signed by the current CA"
    have = sorted(cert_addresses(cert))
    want = sorted(set(addresses))
    if have != want:
        return (
            f"its addresses {', '.join(have) or '(none)'} differ from {', '.join(want)}"
        )
    left = days_left(cert, now)
    if left < renew_threshold(cert):
        return f"it expires in {left} days" if left >= 0 else "it has expired"
    return None


def renew_threshold(cert: x509.Certificate) -> int:
    """Days before expiry at which to reissue: 30, or a third of a shorter lifetime,
    so a certificate made for 10 days is not reissued on every run."""
    lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    return min(RENEW_DAYS, lifetime // 3)


def check_is_ca(cert: x509.Certificate, path: Path) -> None:
    """Refuse a certificate that cannot sign others, before anything is deployed."""
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise StateError(
            f"{path}: is not a CA certificate (no basicConstraints CA:TRUE); restore "
            "the CA's ca.crt and ca.key from your backup"
        )


#: The longest validity we issue: beyond it dates overflow and nothing is gained.
MAX_DAYS = 36500


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` atomically; the file has ``mode`` from its first byte on."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_key_pair(
    key_path: Path, key_data: bytes, cert_path: Path, cert_data: bytes
) -> None:
    """Replace a key and its certificate together, or leave both as they were.

    Both new files are written and synced beside their targets first; the old ones
    stay linked under another name until both renames went through, and come back if
    one failed, so a key never meets a certificate it does not belong to.
    """
    wanted = ((key_path, key_data, 0o600), (cert_path, cert_data, 0o644))
    staged: dict[Path, str] = {}
    backups: dict[Path, Path] = {}
    replaced: list[Path] = []
    try:
        for path, data, mode in wanted:
            handle, staged[path] = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}."
            )
            os.fchmod(handle, mode)
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        for path in staged:
            if path.exists():
                backups[path] = path.with_name(f".{path.name}.before")
                backups[path].unlink(missing_ok=True)
                os.link(path, backups[path])
        for path, temporary in staged.items():
            os.replace(temporary, path)
            replaced.append(path)
    except BaseException:
        for path in replaced:
            if path in backups:
                os.replace(backups.pop(path), path)
            else:
                path.unlink(missing_ok=True)
        raise
    finally:
        leftovers: list[str | Path] = [*staged.values(), *backups.values()]
        for leftover in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def tighten_key_mode(path: Path) -> None:
    """Keys are 0600: put back a looser mode, and say so, as it may have leaked."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # reading it says what is wrong
    if mode & 0o077:
        try:
            path.chmod(0o600)
        except OSError as exc:
            raise StateError(
                f"{path}: readable by others (mode {mode:04o}) and cannot be set to "
                f"0600 ({exc.strerror}); fix its mode (and lsattr flags) by hand"
            ) from None
        log.warning(
            "warning: %s was readable by others (mode %04o); set it back to 0600. If "
            "anyone else could read it, treat the key as leaked",
            path,
            mode,
        )


@dataclass
class Issued:
    """A certificate with its key, and what the run did about it."""

    cert: x509.Certificate
    key: PrivateKey
    change: str | None  # None: reused as it was


class StateFolder:
    """The control machine's folder of keys and certificates (default ``pki/``).

    ``ca.crt``/``ca.key`` are the CA, ``server.crt``/``server.key`` the registry's
    certificate. The CA key is read here and nowhere else; it never leaves this machine.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ca_cert_path = path / "ca.crt"
        self.ca_key_path = path / "ca.key"
        self.server_cert_path = path / "server.crt"
        self.server_key_path = path / "server.key"
        # A CA rotation in progress: the next CA, and a mark once it signs.
        self.next_dir = path / "next"
        self.next_cert_path = self.next_dir / "ca.crt"
        self.next_key_path = self.next_dir / "ca.key"
        self.switched_path = self.next_dir / "switched"
        self.retired_dir = path / "retired"
        # How setup-registry last ran the registry: what later runs default to.
        self.settings_path = path / "registry.json"
        self._lock_depth = 0

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock; a second run at the same time is refused.

        Re-entrant within one run: a task that holds it may call steps that take it.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self._make_folder()
        lock_path = self.path / ".lock"
        try:
            lock = open(lock_path, "a")  # noqa: SIM115 - held for the whole block
        except OSError as exc:
            raise StateError(
                f"{lock_path}: cannot open the lock file ({exc.strerror}); make "
                f"{self.path} a writable folder"
            ) from None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(
                    f"{self.path}: another run is using this state folder; wait for it "
                    "to finish and run again"
                ) from None
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _make_folder(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"{self.path}: cannot create the state folder: {exc.strerror}; pass "
                "--pki-dir with a writable folder"
            ) from None
        if self.path.stat().st_mode & 0o077:
            os.chmod(self.path, 0o700)

    def read_ca(self) -> tuple[x509.Certificate, PrivateKey] | None:
        """Load the CA; None when this folder has never had one."""
        have_cert = self.ca_cert_path.exists()
        have_key = self.ca_key_path.exists()
        if not have_cert and not have_key:
            if self.server_cert_path.exists():
                raise StateError(
                    f"{self.ca_cert_path}: missing although {self.server_cert_path} "
                    "exists; restore ca.crt and ca.key from your backup (a new CA "
                    "would make every client distrust the registry)"
                )
            return None
        if not have_key:
            raise StateError(
                f"{self.ca_key_path}: missing beside {self.ca_cert_path}; restore it "
                "from your backup (a new CA would make every client distrust the "
                "registry)"
            )
        if not have_cert:
            raise StateError(
                f"{self.ca_cert_path}: missing beside {self.ca_key_path}; restore it "
                "from your backup"
            )
        cert = self._read_cert(self.ca_cert_path)
        key = self._read_key(self.ca_key_path)
        check_is_ca(cert, self.ca_cert_path)
        if not _same_public_key(cert, key):
            raise StateError(
                f"{self.ca_key_path}: does not belong to {self.ca_cert_path}; restore "
                "the matching pair from your backup"
            )
        return cert, key

    def read_ca_cert(self) -> x509.Certificate:
        """Load the CA certificate alone (what clients must trust)."""
        if not self.ca_cert_path.exists():
            raise StateError(
                f"{self.ca_cert_path}: no CA yet; run setup-registry first, or pass "
                "--pki-dir with the folder that holds ca.crt"
            )
        cert = self._read_cert(self.ca_cert_path)
        check_is_ca(cert, self.ca_cert_path)
        return cert

    def read_next_ca(self) -> tuple[x509.Certificate, PrivateKey] | None:
        """The next CA of a rotation in progress, or None."""
        if not self.next_cert_path.exists():
            if self.switched_path.exists():
                raise StateError(
                    f"{self.next_cert_path}: missing although the registry was "
                    "switched to it; restore pki/next/ca.crt and ca.key from your "
                    "backup"
                )
            return None
        cert = self._read_cert(self.next_cert_path)
        check_is_ca(cert, self.next_cert_path)
        key = self._read_key(self.next_key_path)
        if not _same_public_key(cert, key):
            raise StateError(
                f"{self.next_key_path}: does not belong to {self.next_cert_path}; "
                "restore the pair, or delete the next/ folder and begin again"
            )
        return cert, key

    @property
    def rotating(self) -> bool:
        return self.next_cert_path.exists()

    @property
    def switched(self) -> bool:
        return self.switched_path.exists()

    def read_settings(self) -> dict[str, Any]:
        """The registry's settings as last deployed; empty when none were saved."""
        try:
            found = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{self.settings_path}: cannot read it ({exc}); delete it and run "
                "setup-registry with the registry's options again"
            ) from None
        if not isinstance(found, dict):
            raise StateError(
                f"{self.settings_path}: not a JSON object; delete it and run "
                "setup-registry with the registry's options again"
            )
        return found

    def save_settings(self, settings: dict[str, Any]) -> None:
        """Remember the registry's settings, when they changed."""
        text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
        with contextlib.suppress(OSError):
            if self.settings_path.read_text(encoding="utf-8") == text:
                return
        write_private_file(self.settings_path, text.encode(), mode=0o644)

    def trust_bundle(self) -> bytes:
        """What clients must trust: the CA, and during a rotation the next one too."""
        return self.trust_variants()[-1]

    def trust_variants(self) -> list[bytes]:
        """Every CA file content trust-clients may have written, the one to write
        now last: the CA alone; during a rotation also the next CA alone and both;
        and what earlier rotations wrote, with the CAs they retired."""
        chain = [*self._retired_cas(), cert_pem(self.read_ca_cert())]
        earlier = chain[:-1] + [old + new for old, new in itertools.pairwise(chain)]
        current = chain[-1]
        found = self.read_next_ca()
        if found is None:
            return [*earlier, current]
        upcoming = cert_pem(found[0])
        return [*earlier, current, upcoming, current + upcoming]

    def _retired_cas(self) -> list[bytes]:
        """The CAs finished rotations retired, oldest first, as PEM."""
        found = []
        for path in sorted(self.retired_dir.glob("ca-*/ca.crt")):
            try:
                found.append(
                    cert_pem(x509.load_pem_x509_certificate(path.read_bytes()))
                )
            except (OSError, ValueError):
                continue  # a damaged archive copy: nothing trust-clients wrote
        return found

    def check_serves(self, address: str, where: str) -> None:
        """Refuse to hand out this folder's CA for a registry it does not serve.

        A --pki-dir of another registry, or a mistyped address, would otherwise put
        on every client a CA that cannot vouch for the registry, replacing one that
        could. ``where`` names the option or key that gave ``address``.
        """
        for path, cert in self._ca_certs():
            if unpermitted_addresses(cert, [address]):
                raise StateError(
                    f"{path}: this CA may only sign for "
                    f"{', '.join(permitted_addresses(cert))}, not {address} ({where}); "
                    "pass --pki-dir with that registry's state folder, or fix "
                    f"{where}"
                )
        if self.server_cert_path.exists():
            served = cert_addresses(self._read_cert(self.server_cert_path))
            if not any(same_address(address, name) for name in served):
                raise StateError(
                    f"{self.server_cert_path}: the registry of this folder serves "
                    f"{', '.join(served)}, not {address} ({where}); pass --pki-dir "
                    f"with that registry's state folder, or fix {where}"
                )

    def _ca_certs(self) -> list[tuple[Path, x509.Certificate]]:
        found = [(self.ca_cert_path, self.read_ca_cert())]
        upcoming = self.read_next_ca()
        if upcoming is not None:
            found.append((self.next_cert_path, upcoming[0]))
        return found

    def known_ca_fingerprints(self) -> set[str]:
        """Fingerprints of the CAs this folder holds (a registry of either is ours)."""
        known = {fingerprint(self.read_ca_cert())}
        found = self.read_next_ca()
        if found is not None:
            known.add(fingerprint(found[0]))
        return known

    def begin_rotation(
        self,
        addresses: Sequence[str],
        *,
        key_type: str = DEFAULT_KEY_TYPE,
        days: int = DEFAULT_CA_DAYS,
        constrain: bool = True,
    ) -> Issued:
        """Make the next CA beside the current one (once)."""
        self.read_ca_cert()
        found = self.read_next_ca()
        if found is not None:
            return Issued(found[0], found[1], None)
        key = generate_key(key_type)
        cert = issue_ca(key, addresses, days=days, constrain=constrain)
        self.next_dir.mkdir(mode=0o700, exist_ok=True)
        write_key_pair(
            self.next_key_path, key_pem(key), self.next_cert_path, cert_pem(cert)
        )
        return Issued(cert, key, "made the next CA")

    def mark_switched(self) -> None:
        write_private_file(self.switched_path, b"the next CA signs\n", mode=0o644)

    def finish_rotation(self) -> Path:
        """Retire the old CA, make the next one current; return where the old went."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        self.retired_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        retired = self.retired_dir / f"ca-{stamp}"
        for number in itertools.count(2):
            try:
                retired.mkdir(mode=0o700)
                break
            except FileExistsError:  # two rotations within a second
                retired = self.retired_dir / f"ca-{stamp}-{number}"
        os.replace(self.ca_cert_path, retired / "ca.crt")
        os.replace(self.ca_key_path, retired / "ca.key")
        os.replace(self.next_key_path, self.ca_key_path)
        os.replace(self.next_cert_path, self.ca_cert_path)
        self.switched_path.unlink()
        self.next_dir.rmdir()
        return retired

    def ensure_ca(
        self,
        addresses: Sequence[str],
        *,
        key_type: str | None = None,
        days: int | None = None,
        constrain: bool | None = None,
    ) -> Issued:
        """Reuse the CA, or make the first one; stop rather than replace it.

        ``key_type``, ``days`` and ``constrain`` shape a new CA (None: the default).
        Given for an existing CA they must describe it: a CA is never changed, and an
        option it cannot honour is an error, not a silent no-op. Once a rotation has
        switched, the next CA is the one that signs.
        """
        if self.switched:
            next_ca = self.read_next_ca()  # raises when it has gone missing
            if next_ca is not None:
                return Issued(next_ca[0], next_ca[1], None)
        found = self.read_ca()
        if found is None:
            key = generate_key(key_type or DEFAULT_KEY_TYPE)
            cert = issue_ca(
                key,
                addresses,
                days=days or DEFAULT_CA_DAYS,
                constrain=constrain is not False,
            )
            self._make_folder()
            try:
                write_key_pair(
                    self.ca_key_path, key_pem(key), self.ca_cert_path, cert_pem(cert)
                )
            except OSError as exc:
                # This CA was never used: leave no half of it to be mistaken for one.
                for path in (self.ca_key_path, self.ca_cert_path):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                raise StateError(
                    f"{self.path}: cannot write the new CA ({exc.strerror}); fix that "
                    "and run again"
                ) from None
            return Issued(cert, key, "created a new CA")
        cert, key = found
        unmet = []
        if key_type is not None and key_type_of(key) != key_type:
            unmet.append(f"--key-type {key_type} (its key is {key_type_of(key)})")
        if days is not None and lifetime_days(cert) != days:
            unmet.append(f"--ca-days {days} (it is valid {lifetime_days(cert)} days)")
        if constrain is False and is_name_constrained(cert):
            unmet.append("--no-name-constraints (it is name-constrained)")
        if unmet:
            raise InputError(
                f"{self.ca_cert_path}: {'; '.join(unmet)}: options for a new CA, and "
                "this one stays as it is; drop them, or replace the CA with rotate-ca"
            )
        if days_left(cert) < 0:
            raise StateError(
                f"{self.ca_cert_path}: the CA expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d}; rotate it with rotate-ca"
            )
        refused = unpermitted_addresses(cert, addresses)
        if refused:
            raise StateError(
                f"{self.ca_cert_path}: the CA's name constraints do not permit "
                f"{', '.join(refused)}; to include it, add it to "
                "registry.extra_addresses in the inventory and rotate the CA with "
                "rotate-ca, or drop the address"
            )
        return Issued(cert, key, None)

    def ensure_server_cert(
        self,
        ca: Issued,
        addresses: Sequence[str],
        *,
        key_type: str | None = None,
        days: int | None = None,
        force: bool = False,
    ) -> Issued:
        """Reuse the server certificate unless its addresses, CA or expiry call for
        a new one, or ``key_type`` or ``days`` (None: the default) differ from it."""
        reason = "asked to" if force else "none existed"
        if (
            not force
            and self.server_cert_path.exists()
            and self.server_key_path.exists()
        ):
            cert = self._read_cert(self.server_cert_path)
            key = self._read_key(self.server_key_path)
            matches = _same_public_key(cert, key)
            problem = server_cert_problem(cert, ca.cert, addresses)
            if problem is None and key_type not in (None, key_type_of(key)):
                problem = f"--key-type {key_type} asked for another key"
            clipped = cert.not_valid_after_utc == ca.cert.not_valid_after_utc
            if problem is None and days not in (None, lifetime_days(cert)):
                problem = None if clipped else f"--server-days {days} asked for it"
            if matches and problem is None:
                return Issued(cert, key, None)
            reason = problem or "its key did not match"
        key = generate_key(key_type or DEFAULT_KEY_TYPE)
        cert = issue_server_cert(
            ca.cert, ca.key, key, addresses, days=days or DEFAULT_SERVER_DAYS
        )
        try:
            write_key_pair(
                self.server_key_path,
                key_pem(key),
                self.server_cert_path,
                cert_pem(cert),
            )
        except OSError as exc:
            raise StateError(
                f"{self.server_cert_path}: cannot write the server certificate and its "
                f"key ({exc.strerror}); check the modes and flags of {self.path} and "
                "its files (ls -l, lsattr), then run again"
            ) from None
        return Issued(cert, key, f"issued a new server certificate ({reason})")

    def _read_cert(self, path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{path}: cannot read the certificate ({exc}); restore it from your "
                "backup"
            ) from None

    def _read_key(self, path: Path) -> PrivateKey:
        tighten_key_mode(path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise StateError(
                f"{path}: cannot read the private key ({exc}); restore it from your "
                "backup"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise StateError(f"{path}: unsupported key type; use ECDSA or RSA")
        return key
