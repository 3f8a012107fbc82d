"""OPC UA: the unit's line state as variables of an OPC UA server (asyncua), for plants on OPC UA.

Namespace ``urn:defect-inspection:edge`` (configurable), object ``DefectInspection`` under Objects
(``docs/line.md``):

==================  =======  ==========================================================================
variable            type     value
==================  =======  ==========================================================================
Heartbeat           UInt32   counts the inference loop's heartbeats
State               String   starting, ready, not_ready, stopping
Ready               Boolean  State == ready
PartSeq             UInt32   the last verdict's part sequence number: written last, watch it for a new one
PartId              String   the last verdict's part id (as on MQTT)
Verdict             String   none, ok, ng, unsure, missed
VerdictCode         UInt16   0 none, 1 OK, 2 NG, 3 unsure, 4 missed (as on Modbus)
PDefect             Double   0..1
TriggerToVerdictMs  Double
Missed              UInt32   missed triggers since start
Trigger             Boolean  writable: write true to trigger a part (reads back false)
==================  =======  ==========================================================================

Every variable but ``Trigger`` is read-only (a write gets BadUserAccessDenied); a write of another type gets
BadTypeMismatch. Refused writes are counted in the line state. The verdict variables are updated on each verdict and
the others every half second.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edge.io.aio import AsyncThread
from edge.io.state import VERDICT_CODES, LineState, Snapshot, Trigger
from edge.parts import PartVerdict

log = logging.getLogger(__name__)
# asyncua warns on every start that the endpoint has no encryption (it is said once in docs/line.md) and logs a
# traceback of its own when it cannot bind; the unit says what went wrong in one line instead.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)

OBJECT = "DefectInspection"
# Each variable's initial value and OPC UA type, in the order they are created: the one table of the namespace.
VARIABLES: dict[str, tuple[Any, str]] = {
    "Heartbeat": (0, "UInt32"), "State": ("starting", "String"), "Ready": (False, "Boolean"), "PartId": ("", "String"),
    "Verdict": ("none", "String"), "VerdictCode": (0, "UInt16"), "PDefect": (0.0, "Double"),
    "TriggerToVerdictMs": (0.0, "Double"), "Missed": (0, "UInt32"), "PartSeq": (0, "UInt32"),
    "Trigger": (False, "Boolean"),
}


class OpcUaLine:
    name = "opcua"

    def __init__(self, state: LineState, *, endpoint: str, namespace: str):
        self.state, self.endpoint, self.namespace = state, endpoint, namespace
        self._aio: AsyncThread | None = None
        self._server: Any = None
        self._nodes: dict[str, Any] = {}
        self._trigger: Trigger | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.triggers = 0

    async def _start(self) -> None:
        from asyncua import ua
        from asyncua.common.callback import CallbackType
        from asyncua.server.server import Server

        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("defect-inspection unit")
        idx = await server.register_namespace(self.namespace)
        obj = await server.nodes.objects.add_object(idx, OBJECT)
        for name, (value, kind) in VARIABLES.items():
            self._nodes[name] = await obj.add_variable(idx, name, ua.Variant(value, getattr(ua.VariantType, kind)))
        trigger = self._nodes["Trigger"]
        await trigger.set_writable()
        server.set_attribute_value_setter(trigger.nodeid, self._on_trigger_write)
        server.subscribe_server_callback(CallbackType.PostWrite, self._after_write)
        await server.start()
        self._server = server
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _on_trigger_write(self, node: Any, attr: Any, value: Any) -> None:
        from asyncua import ua

        if value.Value.Value is True and self._trigger is not None:
            self._trigger("opcua")
            self.triggers += 1
        node.attributes[attr].value = ua.DataValue(ua.Variant(False, ua.VariantType.Boolean))

    def _after_write(self, event: Any, dispatcher: Any) -> None:
        refused = sum(1 for status in (event.response_params or []) if not status.is_good())
        for _ in range(refused):
            self.state.refuse("opcua: refused a write from a client (read-only variable or wrong type)")

    async def _write(self, values: dict[str, Any]) -> None:
        from asyncua import ua

        for name, value in values.items():  # in order: PartSeq last, so a client seeing it sees the rest
            variant = ua.Variant(value, getattr(ua.VariantType, VARIABLES[name][1]))
            await self._server.write_attribute_value(self._nodes[name].nodeid, ua.DataValue(variant))

    async def _tick(self) -> None:
        while True:
            s = self.state.snapshot()
            await self._write({"Heartbeat": s.heartbeat & 0xFFFFFFFF, "State": s.state, "Ready": s.state == "ready",
                               "Missed": s.missed})
            await asyncio.sleep(0.5)

    @staticmethod
    def _verdict_values(s: Snapshot) -> dict[str, Any]:
        return {"PartId": s.part_id, "Verdict": s.verdict, "VerdictCode": VERDICT_CODES[s.verdict],
                "PDefect": s.p_defect, "TriggerToVerdictMs": s.trigger_to_verdict_ms, "Missed": s.missed,
                "PartSeq": s.seq & 0xFFFFFFFF}

    def start(self, trigger: Trigger) -> None:
        self._trigger = trigger
        self._aio = AsyncThread("opcua")
        try:
            self._aio.call(self._start(), timeout=30)
        except Exception as e:
            self._aio.stop()
            self._aio = None
            raise OSError(f"opcua: cannot serve {self.endpoint}: {e}") from None
        log.info("opcua: serving %s, namespace %s", self.endpoint, self.namespace)

    def decided(self, v: PartVerdict) -> None:
        if self._aio is not None:
            self._aio.post(self._write(self._verdict_values(self.state.snapshot())))

    def stop(self) -> None:
        if self._aio is not None:
            if self._ticker is not None:
                self._aio.loop.call_soon_threadsafe(self._ticker.cancel)
            if self._server is not None:
                self._aio.call(self._server.stop())
            self._aio.stop()
            self._aio = None
