"""``defect-console run``: the historian, the live feed and the web server in one process.

The web server is uvicorn in the main thread (it handles SIGTERM and SIGINT: the console stops within seconds); the
historian and the live feed keep their own MQTT connections on paho's threads; housekeeping prunes the store.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from console import commands
from console.app import Services, create_app
from console.config import ConsoleConfig
from console.ingest import Historian
from console.live import LiveFeed, LiveHub
from console.releasefeed import ReleaseFeed
from console.store import db, retention, rollouts

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: it re-raises SIGTERM after shutting down, which would end the process
    before the historian acknowledged what it stored. The console's handlers ask it to exit instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(cfg: ConsoleConfig) -> int:
    engine = db.engine_for(cfg.database_url())
    revision = db.migrate(engine)
    hub = LiveHub()
    historian = Historian(cfg, engine)
    feed = LiveFeed(cfg, hub)

    def publish(topic: str, payload: bytes) -> None:
        historian.client.publish(topic, payload, qos=1)

    server: _Server | None = None
    services = Services(cfg, engine, hub, publish, lambda: historian.state,
                        stopping=lambda: server is not None and server.should_exit)
    app = create_app(services)
    stop = threading.Event()

    def housekeeping() -> None:
        while not stop.wait(60):
            try:
                retention.prune(engine, cfg, time.time())
            except Exception:  # pruning must never end the console: say it and try again next minute
                log.exception("pruning failed")

    def rolling() -> None:  # the rollouts' driver: what the units reported, and the commands their waves need
        def send(device_id: str, name: str, args: dict[str, Any], who: str) -> None:
            commands.send(engine, publish, cfg.mqtt.edge_prefix, who, device_id, name, args)

        while not stop.wait(2.0):
            try:
                rollouts.step(engine, send)
            except Exception:  # a rollout must never end the console: say it and try again
                log.exception("rollouts: a step failed")

    # Units that reach nothing but the broker take releases through it (console/releasefeed.py).
    releases = ReleaseFeed(cfg, cfg.releases_dir) if cfg.releases_dir is not None else None
    historian.start()
    feed.start()
    if releases:
        releases.start()
    threading.Thread(target=housekeeping, name="housekeeping", daemon=True).start()
    threading.Thread(target=rolling, name="rollouts", daemon=True).start()
    w = cfg.web
    log.info("console %s: schema %s on %s, web on %s:%d", cfg.id, revision, engine.dialect.name, w.host, w.port)
    server = _Server(uvicorn.Config(app, host=w.host, port=w.port, log_level="warning", access_log=False,
                                    ssl_certfile=str(w.tls_cert_file) if w.tls_cert_file else None,
                                    ssl_keyfile=str(w.tls_key_file) if w.tls_key_file else None,
                                    proxy_headers=True, forwarded_allow_ips="127.0.0.1",
                                    timeout_graceful_shutdown=3))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run()
        if not server.started:
            log.error("the web server could not start (is port %d taken?)", w.port)
            return 1
    finally:
        stop.set()
        services.inspector.stop()  # the Grad-CAM workers of the inspect page
        feed.stop()
        if releases:
            releases.stop()
        historian.stop()
        engine.dispose()
    return 0
