"""TLS for servers: certificates reloaded when their files change (client channels:
``talkmesh.common.client_tls``).

``ReloadingServerCertificates(cfg.tls).credentials()`` gives gRPC *dynamic* server credentials: gRPC asks a fetcher for
the certificate configuration at each new TLS handshake; the fetcher compares the files'
modification times (and sizes) with the ones it loaded and returns a new configuration only when
they changed. A half-rotated pair (new key, old certificate) is not taken: the fetcher keeps the
previous configuration until the key matches the certificate again, so a rotation done in two
writes never breaks new handshakes. Kubernetes updates a mounted Secret atomically (a symlink
swap), cert-manager renews by rewriting the Secret: both are picked up without a restart.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from talkmesh.common.client_tls import file_stamp, key_matches_certificate
from talkmesh.common.config import ConfigError, ServerTLS

log = logging.getLogger(__name__)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError.at(what, f"cannot read {path}: {exc.strerror or exc}") from None


class ReloadingServerCertificates:
    """The certificate configuration of one server, re-read when its files change."""

    def __init__(self, tls: ServerTLS) -> None:
        if not tls.enabled:
            raise ValueError("TLS is not configured")
        self.tls = tls
        self._paths = [tls.cert_file, tls.key_file] + ([tls.client_ca_file] if tls.client_ca_file else [])
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int], ...] = ()
        #: how many certificate configurations were loaded (1 at start, +1 per reload)
        self.loads = 0
        self.initial = self._load()
        if self.initial is None:
            raise ConfigError.at("tls.key_file", f"{tls.key_file} is not the key of the certificate {tls.cert_file}")

    def _load(self) -> grpc.ServerCertificateConfiguration | None:
        tls = self.tls
        try:
            stamp = file_stamp(self._paths)
        except OSError as exc:
            if self.loads == 0:
                raise ConfigError.at("tls.cert_file", f"cannot read the TLS files: {exc}") from None
            log.warning("TLS files unreadable, keeping the loaded certificate: %s", exc)
            return None
        cert = _read(tls.cert_file, "tls.cert_file")
        key = _read(tls.key_file, "tls.key_file")
        ca = _read(tls.client_ca_file, "tls.client_ca_file") if tls.client_ca_file else None
        if not key_matches_certificate(key, cert):
            if self.loads:
                log.warning("TLS key and certificate do not match (rotation in progress?); keeping the loaded one")
            return None
        self._stamp = stamp
        self.loads += 1
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None (keep the current)."""
        with self._lock:
            try:
                if file_stamp(self._paths) == self._stamp:
                    return None
                config = self._load()
            except Exception:  # never let a bad file break the handshake thread
                log.exception("reloading the TLS certificate failed; keeping the loaded one")
                return None
            if config is not None:
                log.info("TLS certificate reloaded from %s", self.tls.cert_file)
            return config

    def credentials(self) -> grpc.ServerCredentials:
        tls = self.tls
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            self.fetch,
            require_client_authentication=bool(tls.client_ca_file) and tls.require_client_cert,
        )
