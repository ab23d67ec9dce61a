"""Test certificates: a throwaway CA, a server certificate for localhost/127.0.0.1 and
client certificates with a SAN URI (e.g. a SPIFFE id) and/or DNS names.

    pki = make_pki(tmp_path)                 # CA + server certificate, as PEM files
    pki.server.cert, pki.server.key, pki.ca_cert
    alice = pki.issue_client("checkin", uri="spiffe://potato.test/ns/prod/sa/checkin")
    alice.cert, alice.key                    # for grpc.ssl_channel_credentials / --tls-cert

Keys are EC P-256 (fast to make), unencrypted PEM (PKCS#8), mode 0600. Certificates
are valid from an hour ago for `days` days.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SPIFFE_CHECKIN = "spiffe://potato.test/ns/prod/sa/checkin"


@dataclass(frozen=True)
class Issued:
    """One certificate and its key, written as PEM files."""

    name: str
    cert: Path
    key: Path
    certificate: x509.Certificate

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER, AA:BB:... (as the server logs it)."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())

    def pem(self) -> tuple[bytes, bytes]:
        """(private key, certificate chain) bytes, the order grpc takes them in."""
        return self.key.read_bytes(), self.cert.read_bytes()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Potato Runs tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Pki:
    """A CA in `dir` and the certificates it issued."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    ca: x509.Certificate
    server: Issued = field(init=False)
    _signer: ec.EllipticCurvePrivateKey = field(repr=False, default_factory=_key)
    days: int = 2

    def _issue(self, name: str, sans: list[x509.GeneralName],
               usage: x509.ObjectIdentifier) -> Issued:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(name)).issuer_name(self.ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1))
                   .not_valid_after(now + dt.timedelta(days=self.days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._signer, hashes.SHA256())
        cert_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return Issued(name, cert_path, key_path, cert)

    def issue_server(self, name: str = "server", dns: Sequence[str] = ("localhost",),
                     ips: Sequence[str] = ("127.0.0.1",)) -> Issued:
        """A server certificate (serverAuth) for these DNS names and IP addresses."""
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self._issue(name, sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def issue_client(self, name: str, uri: str | None = None,
                     dns: str | Sequence[str] | None = None) -> Issued:
        """A client certificate (clientAuth) with a SAN URI and/or DNS name(s); the
        subject CN is `name`."""
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)] if uri else []
        if dns is not None:
            sans += [x509.DNSName(d) for d in ([dns] if isinstance(dns, str) else dns)]
        return self._issue(name, sans, ExtendedKeyUsageOID.CLIENT_AUTH)


def make_pki(directory: Path, name: str = "ca", days: int = 2) -> Pki:
    """A new CA `name` in `directory` (created), with a server certificate for
    localhost and 127.0.0.1 (`pki.server`). Files: `<name>.crt`, `<name>.key`,
    `server.crt`, `server.key`, then `<client>.crt`/`.key` per issue_client."""
    directory.mkdir(parents=True, exist_ok=True)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    subject = _name(f"Potato Runs test CA {name}")
    ca = (x509.CertificateBuilder()
          .subject_name(subject).issuer_name(subject).public_key(key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(key, hashes.SHA256()))
    ca_cert, ca_key = directory / f"{name}.crt", directory / f"{name}.key"
    ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, key)
    pki = Pki(dir=directory, ca_cert=ca_cert, ca_key=ca_key, ca=ca, _signer=key, days=days)
    pki.server = pki.issue_server()
    return pki
