"""TLS material for a fedscore deployment: one consortium CA, server/client certificates, node keys.

Why a module of our own: every network hop in fedscore (SuperNode → SuperLink, scoring gateway ↔
responders, lender → gateway) must run over TLS that the consortium controls end to end, and the
SuperLink must only accept SuperNodes whose ECDSA P-384 keys were registered. This module is the
safe recipe layer: callers ask for "a CA", "a server certificate for these hosts", "a node auth key";
algorithm choices (P-384 ECDSA, SHA-384, short validity, key usage and EKU extensions) are fixed
here and not exposed. Private keys are written ``0600``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.errors import CryptoError

__all__ = [
    "InvalidCertificate",
    "CertificateAuthority",
    "IssuedCertificate",
    "NodeAuthKey",
    "DeploymentPki",
    "create_ca",
    "load_ca",
    "generate_node_auth_key",
    "write_deployment_pki",
    "load_certificate",
    "verify_issued_by",
]



class InvalidCertificate(CryptoError, ValueError):
    """A certificate or key is malformed, mismatched, expired or not issued by the expected CA."""


DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
_CURVE = ec.SECP384R1
_HASH = hashes.SHA384
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidCertificate(
            f"name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return name


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    """IP addresses and DNS names (RFC 1123 labels, an optional leading ``*.``); anything else is refused."""
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        name = host.removeprefix("*.")
        if len(host) > 253 or not all(_LABEL_RE.match(label) for label in name.split(".")):
            raise InvalidCertificate(f"host {host!r} is neither an IP address nor a DNS name")
        entries.append(x509.DNSName(host))
    if not entries:
        raise InvalidCertificate("a server certificate needs at least one host name or IP")
    return x509.SubjectAlternativeName(entries)


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 before any secret byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int) -> x509.CertificateBuilder:
    """What every certificate here shares: random serial, valid from five minutes ago (clock skew
    between hosts) for ``days``."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA key signs certificates (and CRLs) only; a leaf key signs and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class _PemPair:
    """PEM encodings of a private key and its certificate (the CA's and every leaf's alike)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    def key_pem(self) -> bytes:
        return _key_pem(self.key)


@dataclass(frozen=True)
class IssuedCertificate(_PemPair):
    """A leaf certificate, its private key and the CA certificate that signed it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_cert: x509.Certificate

    def write(self, cert_path: Path, key_path: Path) -> None:
        _write_public(cert_path, self.cert_pem())
        _write_private(key_path, self.key_pem())


@dataclass(frozen=True)
class CertificateAuthority(_PemPair):
    """The consortium root: signs every server and client certificate of one deployment."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def _issue(
        self,
        common_name: str,
        *,
        hosts: Sequence[str] | None,
        usages: Sequence[x509.ObjectIdentifier],
        days: int,
    ) -> IssuedCertificate:
        if days <= 0:
            raise InvalidCertificate("validity must be at least one day")
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _builder(subject, self.cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if hosts is not None:
            builder = builder.add_extension(_san(hosts), critical=False)
        cert = builder.sign(self.key, _HASH())
        return IssuedCertificate(key=key, cert=cert, ca_cert=self.cert)

    def issue_server(
        self, common_name: str, hosts: Sequence[str] = DEFAULT_HOSTS, *, days: int = 365
    ) -> IssuedCertificate:
        """A certificate a TLS server presents; ``hosts`` become its SAN (IPs and DNS names)."""
        return self._issue(
            _check_name(common_name),
            hosts=hosts,
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
            days=days,
        )

    def issue_client(self, common_name: str, *, days: int = 365) -> IssuedCertificate:
        """A certificate a mutual-TLS client presents; its CN names the party."""
        return self._issue(
            _check_name(common_name),
            hosts=None,
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
            days=days,
        )

    def issue_peer(
        self, common_name: str, hosts: Sequence[str] = DEFAULT_HOSTS, *, days: int = 365
    ) -> IssuedCertificate:
        """A certificate for a party that both serves and dials mutual TLS (gateway, responder)."""
        return self._issue(
            _check_name(common_name),
            hosts=hosts,
            usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            days=days,
        )


def create_ca(common_name: str = "fedscore-consortium-ca", *, days: int = 3650) -> CertificateAuthority:
    """A fresh self-signed root for one consortium (path length 0: it signs leaves only)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _check_name(common_name))])
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _HASH())
    )
    return CertificateAuthority(key=key, cert=cert)


def load_certificate(path: Path | str) -> x509.Certificate:
    """Read one PEM certificate; a file that is not one raises :class:`InvalidCertificate`."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (ValueError, OSError) as exc:
        raise InvalidCertificate(f"cannot read certificate {Path(path).name}: {exc}") from exc


def load_ca(cert_path: Path | str, key_path: Path | str) -> CertificateAuthority:
    """Reload a CA written by :func:`write_deployment_pki` to issue more certificates later."""
    cert = load_certificate(cert_path)
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (ValueError, OSError, TypeError) as exc:
        raise InvalidCertificate(f"cannot read CA key {Path(key_path).name}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidCertificate("CA key is not an ECDSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise InvalidCertificate("CA key does not match CA certificate")
    return CertificateAuthority(key=key, cert=cert)


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Check signature, issuer name and validity window; raise :class:`InvalidCertificate` if not."""
    if cert.issuer != ca_cert.subject:
        raise InvalidCertificate("certificate was not issued by this CA (issuer name differs)")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise InvalidCertificate("certificate signature does not verify under this CA") from exc
    now = _now()
    if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise InvalidCertificate("certificate is outside its validity window")


@dataclass(frozen=True)
class NodeAuthKey:
    """A SuperNode authentication key pair (ECDSA P-384, OpenSSH encodings).

    The SuperLink only admits a SuperNode whose public key was registered with it; the private half
    never leaves the node.
    """

    private_openssh: bytes
    public_openssh: bytes

    def write(self, private_path: Path, public_path: Path) -> None:
        _write_private(private_path, self.private_openssh)
        _write_public(public_path, self.public_openssh)


def generate_node_auth_key(comment: str = "") -> NodeAuthKey:
    """A fresh ECDSA P-384 key pair in the OpenSSH formats the Flower CLI and SuperNode read."""
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    if comment:
        public = public + b" " + _check_name(comment).encode()
    return NodeAuthKey(private_openssh=private, public_openssh=public + b"\n")


@dataclass(frozen=True)
class DeploymentPki:
    """Where :func:`write_deployment_pki` put each file (paths only, never key bytes)."""

    root: Path
    ca_cert: Path
    ca_key: Path
    superlink_cert: Path
    superlink_key: Path
    gateway_cert: Path
    gateway_key: Path
    responder_certs: dict[str, Path]
    responder_keys: dict[str, Path]
    lender_cert: Path
    lender_key: Path
    supernode_private_keys: dict[str, Path]
    supernode_public_keys: dict[str, Path]

    def manifest(self) -> dict[str, object]:
        """JSON-ready listing, relative to ``root``."""

        def rel(p: Path) -> str:
            return str(p.relative_to(self.root))

        return {
            "ca_cert": rel(self.ca_cert),
            "ca_key": rel(self.ca_key),
            "superlink": {"cert": rel(self.superlink_cert), "key": rel(self.superlink_key)},
            "scoring": {
                "gateway": {"cert": rel(self.gateway_cert), "key": rel(self.gateway_key)},
                "responders": {
                    n: {"cert": rel(self.responder_certs[n]), "key": rel(self.responder_keys[n])}
                    for n in self.responder_certs
                },
                "lender": {"cert": rel(self.lender_cert), "key": rel(self.lender_key)},
            },
            "supernodes": {
                n: {
                    "private_key": rel(self.supernode_private_keys[n]),
                    "public_key": rel(self.supernode_public_keys[n]),
                }
                for n in self.supernode_private_keys
            },
        }


def write_deployment_pki(
    out_dir: Path | str,
    participants: Sequence[str],
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    lender: str = "lender",
    ca: CertificateAuthority | None = None,
    days: int = 365,
) -> DeploymentPki:
    """Write everything a deployment needs under ``out_dir``.

    Layout: ``ca.crt``/``ca.key``; ``superlink/server.{crt,key}`` (SAN = ``hosts``);
    ``scoring/gateway.{crt,key}``, ``scoring/<participant>.{crt,key}``, ``scoring/<lender>.{crt,key}``
    for mutual TLS on the scoring path; ``supernodes/<participant>.key|.pub`` node auth keys;
    ``pki.json`` manifest. Keep ``ca.key`` offline once the deployment is issued.
    """
    names = [_check_name(p) for p in participants]
    if len(set(names)) != len(names):
        raise InvalidCertificate("participant names must be unique")
    _san(hosts)  # a bad host is refused before anything is written
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    ca = ca or create_ca()

    ca_cert, ca_key = root / "ca.crt", root / "ca.key"
    _write_public(ca_cert, ca.cert_pem())
    _write_private(ca_key, ca.key_pem())

    sl_cert, sl_key = root / "superlink" / "server.crt", root / "superlink" / "server.key"
    ca.issue_server("superlink", hosts, days=days).write(sl_cert, sl_key)

    gw_cert, gw_key = root / "scoring" / "gateway.crt", root / "scoring" / "gateway.key"
    ca.issue_peer("scoring-gateway", hosts, days=days).write(gw_cert, gw_key)

    resp_certs: dict[str, Path] = {}
    resp_keys: dict[str, Path] = {}
    priv: dict[str, Path] = {}
    pub: dict[str, Path] = {}
    for name in names:
        resp_certs[name] = root / "scoring" / f"{name}.crt"
        resp_keys[name] = root / "scoring" / f"{name}.key"
        ca.issue_peer(name, hosts, days=days).write(resp_certs[name], resp_keys[name])
        priv[name] = root / "supernodes" / f"{name}.key"
        pub[name] = root / "supernodes" / f"{name}.pub"
        generate_node_auth_key(name).write(priv[name], pub[name])

    ln_cert, ln_key = root / "scoring" / f"{_check_name(lender)}.crt", root / "scoring" / f"{lender}.key"
    if lender in names:
        raise InvalidCertificate("the lender name must differ from every participant name")
    ca.issue_client(lender, days=days).write(ln_cert, ln_key)

    pki = DeploymentPki(
        root=root,
        ca_cert=ca_cert,
        ca_key=ca_key,
        superlink_cert=sl_cert,
        superlink_key=sl_key,
        gateway_cert=gw_cert,
        gateway_key=gw_key,
        responder_certs=resp_certs,
        responder_keys=resp_keys,
        lender_cert=ln_cert,
        lender_key=ln_key,
        supernode_private_keys=priv,
        supernode_public_keys=pub,
    )
    (root / "pki.json").write_text(json.dumps(pki.manifest(), indent=2) + "\n")
    return pki
