"""Properties of the deployment PKI: chains verify, SANs and EKUs fit the role, keys stay private."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from crypto.errors import CryptoError
from crypto.tls import (
    InvalidCertificate,
    create_ca,
    generate_node_auth_key,
    load_ca,
    load_certificate,
    verify_issued_by,
    write_deployment_pki,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return write_deployment_pki(tmp_path_factory.mktemp("pki"), ["bank_a", "bank_b", "tax"])


def _eku(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_every_leaf_chains_to_the_ca(pki):
    ca = load_certificate(pki.ca_cert)
    leaves = [pki.superlink_cert, pki.gateway_cert, pki.lender_cert, *pki.responder_certs.values()]
    for path in leaves:
        verify_issued_by(load_certificate(path), ca)


def test_a_foreign_ca_is_rejected(pki):
    other = create_ca("other-ca")
    with pytest.raises(InvalidCertificate):
        verify_issued_by(load_certificate(pki.superlink_cert), other.cert)
    # Same subject name, different key: the signature check must catch it.
    impostor = create_ca("fedscore-consortium-ca")
    with pytest.raises(InvalidCertificate):
        verify_issued_by(load_certificate(pki.superlink_cert), impostor.cert)


@pytest.mark.parametrize("host", ["not a host!!", "", "-lead.example", "a..b", "under_score.example", "x" * 64])
def test_a_host_that_is_neither_an_ip_nor_a_dns_name_is_refused_by_name(host):
    with pytest.raises(InvalidCertificate, match="neither an IP address nor a DNS name") as info:
        create_ca().issue_server("superlink", ["localhost", host])
    assert repr(host) in str(info.value)


def test_ips_dns_names_and_a_wildcard_are_accepted():
    cert = create_ca().issue_server("superlink", ["::1", "10.0.0.7", "gw-1.example.org", "*.svc.local"]).cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw-1.example.org", "*.svc.local"]


def test_superlink_cert_names_loopback_and_is_server_only(pki):
    cert = load_certificate(pki.superlink_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp384r1"


def test_scoring_peers_do_mutual_tls_and_lender_is_client_only(pki):
    for path in [pki.gateway_cert, *pki.responder_certs.values()]:
        assert _eku(load_certificate(path)) == {
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        }
    assert _eku(load_certificate(pki.lender_cert)) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_ca_is_a_ca_and_leaves_are_not(pki):
    ca = load_certificate(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf = load_certificate(pki.superlink_cert)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_private_keys_are_owner_only(pki):
    keys = [pki.ca_key, pki.superlink_key, pki.gateway_key, pki.lender_key]
    keys += list(pki.responder_keys.values()) + list(pki.supernode_private_keys.values())
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_supernode_keys_are_p384_openssh_pairs(pki):
    seen = set()
    for name, priv_path in pki.supernode_private_keys.items():
        priv = load_ssh_private_key(priv_path.read_bytes(), None)
        pub = load_ssh_public_key(pki.supernode_public_keys[name].read_bytes())
        assert isinstance(priv, ec.EllipticCurvePrivateKey)
        assert priv.curve.name == "secp384r1"
        assert priv.public_key().public_numbers() == pub.public_numbers()
        seen.add(pub.public_numbers().x)
    assert len(seen) == len(pki.supernode_private_keys)  # one distinct key per node


def test_manifest_lists_only_paths_that_exist(pki):
    manifest = json.loads((pki.root / "pki.json").read_text())

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from walk(x)
        else:
            yield v

    paths = list(walk(manifest))
    assert paths and all((pki.root / p).is_file() for p in paths)
    assert "BEGIN" not in json.dumps(manifest)  # paths, never key material


def test_reloaded_ca_issues_certificates_that_verify(pki):
    ca = load_ca(pki.ca_cert, pki.ca_key)
    leaf = ca.issue_client("late_joiner")
    verify_issued_by(leaf.cert, load_certificate(pki.ca_cert))


def test_mismatched_ca_key_is_refused(pki, tmp_path):
    other = create_ca("other-ca")
    (tmp_path / "wrong.key").write_bytes(other.key_pem())
    with pytest.raises(InvalidCertificate):
        load_ca(pki.ca_cert, tmp_path / "wrong.key")


@pytest.mark.parametrize("bad", ["", "../escape", "a b", "x" * 65])
def test_bad_names_are_typed_errors(bad, tmp_path):
    with pytest.raises(InvalidCertificate) as info:
        write_deployment_pki(tmp_path, [bad])
    assert isinstance(info.value, CryptoError)


def test_garbage_certificate_is_a_typed_error(tmp_path):
    (tmp_path / "x.crt").write_bytes(b"not a certificate")
    with pytest.raises(InvalidCertificate):
        load_certificate(tmp_path / "x.crt")


def test_node_keys_are_fresh():
    a, b = generate_node_auth_key(), generate_node_auth_key()
    assert a.public_openssh != b.public_openssh
    assert a.public_openssh.startswith(b"ecdsa-sha2-nistp384 ")


def test_mutual_tls_handshake_accepts_consortium_and_refuses_strangers(pki):
    """The issued certificates work with a stock TLS stack, and a client from another CA is refused."""

    def server_ctx():
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.gateway_cert), str(pki.gateway_key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def run_server(sock, ctx, result):
        conn, _ = sock.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                result["peer"] = tls.getpeercert()["subject"]
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            result["error"] = exc

    def handshake(cert, key):
        srv = socket.create_server(("127.0.0.1", 0))
        result: dict = {}
        t = threading.Thread(target=run_server, args=(srv, server_ctx(), result))
        t.start()
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(cert), str(key))
        try:
            with socket.create_connection(srv.getsockname()) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    data = tls.recv(2)
        except (ssl.SSLError, OSError) as exc:
            data = exc
        t.join(5)
        srv.close()
        return data, result

    data, result = handshake(pki.lender_cert, pki.lender_key)
    assert data == b"ok" and "error" not in result

    stranger = create_ca("stranger-ca").issue_client("lender")
    d = pki.root / "stranger"
    stranger.write(d / "s.crt", d / "s.key")
    data, result = handshake(d / "s.crt", d / "s.key")
    assert "error" in result
