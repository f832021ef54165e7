"""``asvat worker``: run the repeat-detector faust worker in this process."""

from __future__ import annotations

import faust

from asvat.domain.policy import Policy
from asvat.embedded.broker import ensure_port_free
from asvat.settings import Settings
from services.repeat_detector.app import create_app


def run(settings: Settings, policy: Policy) -> int:
    ensure_port_free(settings.worker_host, settings.worker_port, "worker HTTP")
    app, _state, _metrics = create_app(settings, policy)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
    return 0
