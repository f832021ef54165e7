"""``asvat worker``: run the repeat-detector faust worker in this process."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import faust

from asvat import native
from asvat.domain.policy import Policy
from asvat.embedded.broker import ensure_port_free
from asvat.logs import configure_logging
from asvat.settings import Settings
from services.repeat_detector.app import create_app


def run(settings: Settings, policy: Policy) -> NoReturn:
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
    try:
        worker.execute_from_commandline()
    except SystemExit as stopped:  # how mode's worker always ends
        code = stopped.code if isinstance(stopped.code, int) else (0 if stopped.code is None else 1)
    else:
        code = 0
    # Everything is written, published and closed by now (the final checkpoint included).
    # Leave without tearing the interpreter down: freeing a national year's state object by
    # object took 10 s after the event loop had closed; the kernel frees it at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
