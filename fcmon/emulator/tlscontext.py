"""The emulator's TLS server context, shared by the API listener
(server.py) and the extra listeners (listeners.py): in a module of its own
so that neither imports the other for it."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Optional


def server_ssl_context(
    cert_file: Path,
    key_file: Optional[Path] = None,
    client_ca_file: Optional[Path] = None,
    tls_max_version: Optional[ssl.TLSVersion] = None,
) -> ssl.SSLContext:
    """The listener's context; client certificates required when a CA is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # 3.9's default still allows TLS 1.0/1.1; FairCom and fcmon want >= 1.2.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls_max_version is not None:
        context.maximum_version = tls_max_version
    context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    if client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca_file))
    return context
