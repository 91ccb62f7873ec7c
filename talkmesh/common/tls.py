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

from pathlib import Path

import grpc

from talkmesh.common.client_tls import require_matching_pair
from talkmesh.common.config import ConfigError, ServerTLS
from talkmesh.common.files import Inconsistent, WatchedFiles


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError.at(what, f"cannot read {path}: {exc.strerror or exc}") from None


class ReloadingServerCertificates:
    """The certificate configuration of one server, re-read when its files change
    (``talkmesh.common.files.WatchedFiles``, looked at at every handshake)."""

    def __init__(self, tls: ServerTLS) -> None:
        if not tls.enabled:
            raise ValueError("TLS is not configured")
        self.tls = tls
        paths = [tls.cert_file, tls.key_file] + ([tls.client_ca_file] if tls.client_ca_file else [])
        try:
            self._files = WatchedFiles(paths, self._load, check_seconds=0, what=f"TLS certificate {tls.cert_file}")
        except Inconsistent:
            mismatch = f"{tls.key_file} is not the key of the certificate {tls.cert_file}"
            raise ConfigError.at("tls.key_file", mismatch) from None
        self.initial = self._files.value

    @property
    def loads(self) -> int:
        """How many certificate configurations were loaded (1 at start, +1 per reload)."""
        return self._files.loads

    def _load(self, _loaded: object) -> grpc.ServerCertificateConfiguration:
        tls = self.tls
        cert = _read(tls.cert_file, "tls.cert_file")
        key = _read(tls.key_file, "tls.key_file")
        ca = _read(tls.client_ca_file, "tls.client_ca_file") if tls.client_ca_file else None
        require_matching_pair(key, cert)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher, called from its handshake threads (``WatchedFiles`` serialises them and
        catches what a bad file raises): a new configuration when the files changed, else None
        (keep the current)."""
        return self._files.refresh()

    def credentials(self) -> grpc.ServerCredentials:
        tls = self.tls
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            self.fetch,
            require_client_authentication=bool(tls.client_ca_file) and tls.require_client_cert,
        )
