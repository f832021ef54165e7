"""Run the API with uvicorn: ``python -m services.api.main`` (or ``asvat api``)."""

from __future__ import annotations

import errno
import socket
import sys

import uvicorn

from asvat.logs import configure_logging
from asvat.runtime import tune_gc
from asvat.settings import Settings, load_settings
from services.api.app import create_app

GRACEFUL_SHUTDOWN_S = 3


def run(settings: Settings) -> None:
    """Serve the API on ``settings.api_host:api_port`` until interrupted.

    Exits with status 1 and one line on stderr if the port is taken.
    """
    configure_logging(settings, "api")
    try:
        sock = bind_socket(settings.api_host, settings.api_port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"asvat api: port {settings.api_port} on {settings.api_host} is already in use; "
                "stop the other process or set ASVAT_API_PORT",
                file=sys.stderr,
            )
        else:
            print(
                f"asvat api: cannot listen on {settings.api_host}:{settings.api_port}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
        raise SystemExit(1) from None
    app = create_app(settings)
    tune_gc()
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go to the JSON handler configure_logging set
        # Live alert streams never end by themselves: give them this long, then close them.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    # Serve on the socket bound above: no window for another process to take the port.
    uvicorn.Server(config).run(sockets=[sock])


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (raises OSError, e.g. EADDRINUSE)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: reuse a port whose old connections linger in TIME_WAIT, but
        # still fail when another process is listening on it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    run(load_settings())
