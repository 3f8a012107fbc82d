"""A real Mosquitto on a free loopback port, that a test can stop and start again, and an MQTT client that collects
what it hears and waits on conditions (no sleep-and-hope)."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Broker:
    """``mosquitto -c`` with the given listener lines; persistence on, so sessions survive a restart."""

    def __init__(self, folder: Path, *, extra: str = "allow_anonymous true\n", port: int | None = None):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.folder = folder
        self.port = port or free_port()
        self.conf = folder / "mosquitto.conf"
        folder.mkdir(parents=True, exist_ok=True)
        # Started as root, mosquitto would switch to its own user and lose access to the test's private files.
        # set_tcp_nodelay as in production (systemd/mosquitto/defect-edge.conf): see there.
        self.conf.write_text(f"user {getpass.getuser()}\nset_tcp_nodelay true\nlistener {self.port} 127.0.0.1\n"
                             f"{extra}persistence true\n"
                             f"persistence_location {folder}/\nautosave_interval 1\nlog_dest file {folder}/log\n"
                             "max_queued_messages 100000\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def log(self) -> str:
        """What the broker logged so far (connections, refusals, TLS errors)."""
        path = self.folder / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class Collector:
    """Subscribes (QoS 1, persistent session) and keeps (topic, payload, retained) in arrival order."""

    def __init__(self, port: int, *subscriptions: str, persistent: bool = True):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrived: list[float] = []  # wall clock of each message's arrival, beside ``messages``
        self._cond = threading.Condition()
        self._subs = subscriptions
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=not persistent)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._unacked: set[int] = set()
        self.client.reconnect_delay_set(0.2, 1)
        self.subscribed = threading.Event()
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("collector could not subscribe")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        self._unacked = {client.subscribe(s, qos=1)[1] for s in self._subs}
        if not self._subs:
            self.subscribed.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, *_: Any) -> None:
        """Subscribed once the broker says so: a message published on another connection before the broker has
        taken the subscription would not be delivered."""
        self._unacked.discard(mid)
        if not self._unacked:
            self.subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.arrived.append(time.time())
            self._cond.notify_all()

    def wait(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def on(self, suffix: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
