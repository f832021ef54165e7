"""``asvat worker``: run the repeat-detector faust worker in this process."""

from __future__ import annotations

import logging

import faust

from asvat import native
from asvat.domain.policy import Policy
from asvat.embedded.broker import ensure_port_free
from asvat.logs import configure_logging
from asvat.settings import Settings
from services.repeat_detector.app import create_app


def run(settings: Settings, policy: Policy) -> int:
    configure_logging(settings, "worker")
    core = native.status()
    logging.getLogger("asvat.worker").info(
        "domain core: %s (%s)", "compiled" if core.compiled else "interpreted", core.reason
    )
    ensure_port_free(settings.worker_host, settings.worker_port, "worker HTTP")
    app, _replica, _metrics = create_app(
        settings, policy, stall_after=settings.worker_stall_seconds
    )
    # override_logging=False: keep the JSON logs configured above (faust would install its
    # own coloured console handler).
    worker = faust.Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, override_logging=False
    )
    worker.execute_from_commandline()
    return 0
