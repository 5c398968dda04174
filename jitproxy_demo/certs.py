"""A throwaway certificate authority and server certificate for local TLS.

Used by the demo and the tests to run MariaDB (and the proxy) with TLS that clients can verify
properly: the server certificate names `localhost` and `127.0.0.1` as subject alternative names,
so a client that checks the server identity against the CA succeeds without switching anything off.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CLOCK_SKEW = dt.timedelta(hours=1)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a CA and of a server certificate it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def make_ca_and_server_cert(
    directory: Path,
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 30,
) -> TlsFiles:
    """Write ca.pem, ca-key.pem, server-cert.pem and server-key.pem into `directory`.

    Every entry of `hostnames` becomes a subject alternative name (an IP address SAN when it
    parses as one, a DNS SAN otherwise); the first is also the certificate's common name.
    Key files are created with mode 0600.
    """
    if not hostnames:
        raise ValueError("make_ca_and_server_cert needs at least one hostname")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - _CLOCK_SKEW, now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jitproxy local"),
            x509.NameAttribute(NameOID.COMMON_NAME, "jitproxy local CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hostnames]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
    )
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(files.ca_key, _private_pem(ca_key), mode=0o600)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(files.server_key, _private_pem(server_key), mode=0o600)
    return files


def client_ssl_context(ca_path: Path) -> ssl.SSLContext:
    """A client context that trusts only `ca_path` and verifies the server's hostname."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write `data` so that the file never exists with looser permissions than `mode`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)  # the file may have existed with looser permissions
        out.write(data)
