"""Which fcmon this is, in the sessions it creates: the instance id.

Every session fcmon creates says "fcmon health check, instance ID" in its
description, and fcmon reaps only orphans that name its own ID
(docs/design-notes.md#fcmon-instance-id-and-reaping). The ID must therefore
stay the same across restarts (so a restarted fcmon finds what a killed one
left) and differ between two fcmon that share an account (so neither
deletes the other's sessions).

`[fcmon] instance_id` sets it. Without it, the ID is derived from this
machine (`/etc/machine-id`, else the host name), the config file's path and
the listen address: a restart with the same config on the same machine
keeps it; two fcmon on one machine need two listen addresses or two
configs anyway, and two machines have two machine ids. Where that is not
so (containers sharing an image's machine id, or a fresh host name at each
start), set instance_id.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Optional

from ..config import Config, format_listen

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def machine_id() -> Optional[str]:
    for path in MACHINE_ID_FILES:
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if text:
            return text
    return None


def instance_id(config: Config, machine: Optional[str] = None) -> str:
    """The configured instance_id, or one derived as the module says."""
    if config.instance_id:
        return config.instance_id
    machine = machine or machine_id() or socket.gethostname()
    seed = "\0".join((machine, str(config.path or ""), format_listen(config.listen_host, config.listen_port)))
    return hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:12]
