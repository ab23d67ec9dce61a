"""Server TLS and mTLS: credentials from Settings.tls_cert / tls_key / tls_client_ca,
reloaded on demand (SIGHUP) without dropping a connection.

gRPC's dynamic credentials (`grpc.dynamic_ssl_server_credentials`) call a fetcher
before the handshake of every new connection; ours returns a new certificate
configuration once after a successful `reload()` and None ("no change") otherwise.
Connections already established keep the session they negotiated; only new
connections see the new files. This works with `grpc.aio` servers
(tests/integration/test_tls.py). The fetcher runs on a gRPC core thread, hence the lock.

Files are validated with the standard library's `ssl` (so the server needs no
third-party crypto package): PEM shape, the key matching the certificate, no
passphrase. A bad file at startup is a one-line `TlsError`; a bad file at reload
keeps the certificates in use and logs one error line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from potato_runs.config import Settings

log = logging.getLogger(__name__)

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"


class TlsError(RuntimeError):
    """A TLS file is missing, unreadable or not what it should be (one-line message)."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the server's TLS material lives; read again on every reload."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by client_ca (mTLS)."""
        return self.client_ca is not None


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes read (and validated) from TlsFiles at one moment."""

    cert_chain: bytes
    key: bytes
    client_ca: bytes | None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf certificate (DER), as `openssl x509 -fingerprint -sha256`
        prints it: what an operator compares after a rotation."""
        return fingerprint(self.cert_chain)


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 fingerprint (AA:BB:...) of the first certificate of a PEM chain."""
    start = cert_pem.index(_CERT_MARK)
    end_mark = b"-----END CERTIFICATE-----"
    end = cert_pem.index(end_mark, start) + len(end_mark)
    der = ssl.PEM_cert_to_DER_cert(cert_pem[start:end].decode("ascii"))
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def tls_files(settings: Settings) -> TlsFiles | None:
    """The TLS files of the settings, None for plaintext; refuses half a configuration."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise TlsError("a client CA (--client-ca, POTATO_TLS_CLIENT_CA) needs TLS: "
                           "pass --tls-cert and --tls-key too")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise TlsError("TLS needs both a certificate and its key: pass --tls-cert and "
                       "--tls-key (POTATO_TLS_CERT, POTATO_TLS_KEY), or neither")
    return TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the TLS {what} {path}: "
                       f"{exc.strerror or type(exc).__name__}") from exc


def read_material(files: TlsFiles) -> TlsMaterial:
    """Reads and validates the files: a PEM certificate chain, an unencrypted PEM key
    that matches it and, for mTLS, a PEM CA bundle. Raises TlsError (one line)."""
    cert, key = _read(files.cert, "certificate"), _read(files.key, "key")
    ca = _read(files.client_ca, "client CA") if files.client_ca is not None else None
    if _CERT_MARK not in cert:
        raise TlsError(f"the TLS certificate {files.cert} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in key:
        raise TlsError(f"the TLS key {files.key} holds no PEM private key")
    if b"ENCRYPTED" in key:
        raise TlsError(f"the TLS key {files.key} is encrypted; give the server an "
                       f"unencrypted key file (mode 0600)")
    if not _parses(cert):
        raise TlsError(f"the TLS certificate {files.cert} is not a valid PEM certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # The password callback refuses any passphrase prompt on the terminal.
        context.load_cert_chain(files.cert, files.key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(f"the TLS key {files.key} does not match the certificate "
                           f"{files.cert}") from exc
        raise TlsError(f"the TLS key {files.key} is not a valid unencrypted PEM private "
                       f"key") from exc
    except OSError as exc:   # the file vanished between the two reads
        raise TlsError(f"cannot read the TLS certificate or key: {exc}") from exc
    if ca is not None and (_CERT_MARK not in ca or not _parses(ca)):
        raise TlsError(f"the client CA {files.client_ca} is not a valid PEM certificate")
    # Validated from the paths: make sure the bytes gRPC gets are the ones validated.
    if _read(files.cert, "certificate") != cert or _read(files.key, "key") != key:
        raise TlsError("the TLS certificate or key changed while being read; "
                       "finish writing both files, then reload again")
    return TlsMaterial(cert, key, ca)


def _parses(pem: bytes) -> bool:
    """Whether every certificate of a PEM bundle parses."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        return False
    return True


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert_chain)], root_certificates=material.client_ca)


class ServerTls:
    """The server's TLS credentials and their reload."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.material = read_material(files)   # TlsError: the server must not start
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        log.info("TLS: certificate %s sha256=%s%s", files.cert, self.material.fingerprint,
                 f"; client certificates signed by {files.client_ca} required (mTLS)"
                 if files.mutual else "")

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port`. Whether a client certificate is required
        is fixed here, for the life of the port: a reload changes the files' contents
        (certificate, key, client CA bundle), not whether mTLS is on."""
        return grpc.dynamic_ssl_server_credentials(
            # grpc-stubs types the fetcher without its documented None ("no change").
            _configuration(self.material), self._fetch,  # type: ignore[arg-type]
            require_client_authentication=self.files.mutual)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC (core thread) before every new handshake: the configuration
        staged by reload(), once, else None (keep the current one). Never raises."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Reads the files again. On success, new connections use them (connections
        already open are kept); on failure the certificates in use stay, and one
        error line is logged. Returns whether the new files were taken."""
        try:
            material = read_material(self.files)
            configuration = _configuration(material)
        except (TlsError, ValueError) as exc:
            log.error("TLS reload failed, still serving certificate sha256=%s: %s",
                      self.material.fingerprint, exc)
            return False
        with self._lock:
            self._pending = configuration
        self.material = material
        log.info("TLS certificates reloaded from %s: new connections get certificate "
                 "sha256=%s%s", self.files.cert, material.fingerprint,
                 f", client CA {self.files.client_ca}" if self.files.mutual else "")
        return True


def server_tls(settings: Settings) -> ServerTls | None:
    """The server's TLS from its settings (None: plaintext). Raises TlsError."""
    files = tls_files(settings)
    return ServerTls(files) if files is not None else None


def is_loopback(host: str) -> bool:
    """Whether `host` binds only this machine's loopback (127.0.0.0/8, ::1, localhost).
    A name is resolved; an unresolvable one counts as not loopback."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def exposure_warnings(settings: Settings) -> list[str]:
    """What `serve` warns about when it listens beyond loopback: no TLS, no access
    policy. Plaintext and an open RunsService are meant for the developer setup on
    127.0.0.1 only."""
    if is_loopback(settings.host):
        return []
    out = []
    if settings.tls_cert is None:
        out.append(f"listening on {settings.host} without TLS: requests and the admin token "
                   f"travel in plaintext; pass --tls-cert and --tls-key (POTATO_TLS_CERT, "
                   f"POTATO_TLS_KEY), or bind 127.0.0.1")
    if settings.auth_policy is None:
        out.append(f"listening on {settings.host} without an access policy: RunsService "
                   f"and TotalsService answer anyone who reaches the port; set "
                   f"POTATO_AUTH_POLICY, or bind 127.0.0.1")
    return out
