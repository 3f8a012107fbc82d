"""A real SMTP server (aiosmtpd) on a free loopback port, keeping every mail it receives (and writing each to a
folder when given one, as ``make demo`` does); optionally STARTTLS with a password, as a plant's relay host has."""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from email.message import Message
from pathlib import Path
from typing import Any

from harness.broker import free_port


class Sink:
    """aiosmtpd handler keeping every delivered message (and writing it to ``folder/NNN.eml`` when given)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.mails: list[tuple[list[str], Message]] = []
        self.arrived: list[float] = []  # time.time() of each mail's arrival, for latency measurements
        self.folder = folder
        self.cond = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        with self.cond:
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.mails.append((list(envelope.rcpt_tos), msg))
            self.arrived.append(time.time())
            if self.folder is not None:
                (self.folder / f"{len(self.mails):03d}.eml").write_bytes(envelope.content)
            self.cond.notify_all()
        return "250 OK"

    def arrival_by_subject(self) -> dict[str, float]:
        with self.cond:
            return {str(m["Subject"]): t for (_, m), t in zip(self.mails, self.arrived, strict=True)}

    def wait(self, n: int, timeout: float = 30.0) -> bool:
        """True once ``n`` mails have arrived, False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.mails) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


class Smtp:
    """``certs``: a folder from :func:`harness.certs.make_certs`; then STARTTLS is required, with login
    ``user`` / ``password``."""

    def __init__(self, certs: Path | None = None, *, folder: Path | None = None, port: int | None = None,
                 user: str = "relay", password: str = "s3cret"):
        self.sink = Sink(folder)
        self.port = port or free_port()
        self.certs = certs
        self.credentials = (user.encode(), password.encode())

    def start(self) -> Smtp:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        kw: dict[str, Any] = {}
        if self.certs:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.certs / "server.crt", self.certs / "server.key")

            def auth(_server: Any, _session: Any, _env: Any, _mech: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login, data.password) == self.credentials
                return AuthResult(success=ok)

            kw = {"tls_context": ctx, "require_starttls": True, "authenticator": auth, "auth_require_tls": True}
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port, **kw)
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
