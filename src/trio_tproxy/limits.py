"""The open-file limit: raised as far as allowed, reported plainly when it will bind.

Every TCP flow holds two descriptors (client and upstream). Routers that hit "too many
open files" (v2ray-core#406, #1574) usually had a loop or a low limit nobody noticed;
we say at start what the limit allows.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("trio_tproxy.limits")

FDS_PER_FLOW = 2
FD_RESERVE = 64  # listeners, DNS sockets, log files, the event loop's own
FDS_PER_PIPE = 2
MAX_PIPES = 1024  # bulk flows at once with zero-copy; beyond that, userspace copying


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, exc)
    return soft


def check_connection_budget(max_connections: int, nofile: int) -> None:
    need = max_connections * FDS_PER_FLOW + FD_RESERVE
    if need > nofile:
        log.warning(
            "policy.max_connections = %d needs about %d open files, but the limit is %d: "
            "about %d flows fit; beyond that new connections wait in the kernel queue",
            max_connections, need, nofile, max(0, (nofile - FD_RESERVE) // FDS_PER_FLOW),
        )  # fmt: skip


def pipe_budget(max_connections: int) -> int:
    """How many splice pipes fit beside ``max_connections`` flows in the open-file limit.

    Uses the hard limit: ``run`` raises the soft limit to it before serving.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return MAX_PIPES
    spare = hard - FD_RESERVE - max_connections * FDS_PER_FLOW
    return max(0, min(MAX_PIPES, spare // FDS_PER_PIPE))
