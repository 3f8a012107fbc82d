"""Modbus TCP: the unit serves holding registers a PLC polls, and a register it writes to trigger a part.

Register map (holding registers, function code 3 to read and 6/16 to write, addresses from 0; ``docs/line.md``):

====  =====================  ====================================================================================
addr  name                   value
====  =====================  ====================================================================================
0     heartbeat              counts the inference loop's heartbeats (twice a second or more; wraps at 65535)
1     state                  0 starting, 1 ready, 2 not ready (camera, model, or the loop stalled), 3 stopping
2     part_seq               the last verdict's part sequence number (wraps at 65535): poll it for a new verdict
3     verdict                0 none yet, 1 OK, 2 NG, 3 unsure, 4 missed
4     p_defect_x1000         0..1000
5     trigger_to_verdict_ms  saturates at 65535
6     missed                 missed triggers since start (wraps)
7     pending                triggers waiting for inference
8     refused                requests refused from the line since start, all interfaces (wraps)
9     duplicates             triggers within the debounce interval of the one before, counted, not parts (wraps)
10    trigger                write 1 to trigger a part; any other value is refused (ILLEGAL DATA VALUE)
====  =====================  ====================================================================================

Registers 0-9 are read-only; they are filled from :class:`~edge.io.state.LineState` at the moment of each read, so one
read of 2-5 always shows one part's verdict. Anything else a client sends is refused with the exception the spec
names, counted in register 8 and said in one rate-limited line: another function code (coils, fc 23, input
registers: ILLEGAL FUNCTION), an address outside 0-10 or a write to 0-9 (ILLEGAL DATA ADDRESS), a value other than 1
at 10 (ILLEGAL DATA VALUE), and a unit id that is not this unit's (GATEWAY TARGET DEVICE FAILED TO RESPOND: nothing
is behind this server). The unit answers its configured ``device_id`` and 255, the id the Modbus TCP spec gives a
server addressed directly; 0, the serial line's broadcast, is refused, so that no client triggers a part without
naming the unit.

pymodbus's simulator would map every unknown unit id to device 0 (or fail with a traceback and a hex dump per
request, 23,883 log lines in 28 s of a PLC polling id 0) and let coil writes reach the trigger register; so the server
is given :class:`Registers` as its data context, which answers exactly the map above.
"""

from __future__ import annotations

import logging
from typing import Any

from edge.io.aio import AsyncThread
from edge.io.state import STATE_CODES, VERDICT_CODES, LineState, Trigger
from edge.parts import PartVerdict

log = logging.getLogger(__name__)

TRIGGER_REGISTER = 10
READ_ONLY = 10  # registers 0..9
U16 = 0xFFFF
TCP_SERVER_ID = 255  # the Modbus TCP spec's unit id for a server addressed directly, not through a gateway
READ_FUNCTIONS = frozenset({3})
WRITE_FUNCTIONS = frozenset({6, 16})


def registers(state: LineState) -> list[int]:
    """Registers 0-9 as a PLC reads them now."""
    s = state.snapshot()
    return [s.heartbeat & U16, STATE_CODES[s.state], s.seq & U16, VERDICT_CODES[s.verdict],
            round(s.p_defect * 1000), min(U16, round(s.trigger_to_verdict_ms)), s.missed & U16,
            min(U16, s.pending), s.refused & U16, s.duplicates & U16]


class Registers:
    """The server's data context (pymodbus calls it for every request, on the server's thread): the register map,
    and a refusal, counted, for anything outside it."""

    def __init__(self, state: LineState, device_id: int, trigger: Trigger):
        self.state, self.ids, self._trigger = state, frozenset({device_id, TCP_SERVER_ID}), trigger
        self.triggers = 0

    def device_ids(self) -> list[int]:
        return sorted(self.ids)

    def _refused(self, device_id: int, function_code: int, address: int, count: int) -> Any:
        from pymodbus.constants import ExcCodes

        if device_id not in self.ids:
            self.state.refuse(f"modbus: refused a request for unit id {device_id} (this unit answers "
                              f"{' and '.join(map(str, sorted(self.ids)))})")
            return ExcCodes.GATEWAY_NO_RESPONSE
        writes = function_code in WRITE_FUNCTIONS
        if not writes and function_code not in READ_FUNCTIONS:
            self.state.refuse(f"modbus: refused function code {function_code} (holding registers only: 3 to read, "
                              "6 or 16 to write)")
            return ExcCodes.ILLEGAL_FUNCTION
        if address < 0 or address + count > TRIGGER_REGISTER + 1 or (writes and address < READ_ONLY):
            self.state.refuse(f"modbus: refused a {'write' if writes else 'read'} of {count} register(s) at "
                              f"{address} (0-{TRIGGER_REGISTER} readable, {TRIGGER_REGISTER} writable)")
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    async def async_getValues(  # noqa: N802 (pymodbus names it)
            self, device_id: int, function_code: int, address: int, count: int = 1) -> Any:
        # fc 6 reads back the register it wrote: the trigger, which always reads 0
        refused = self._refused(device_id, 3 if function_code in WRITE_FUNCTIONS else function_code, address, count)
        if refused is not None:
            return refused
        live = [*registers(self.state), 0]
        return live[address:address + count]

    async def async_setValues(  # noqa: N802 (pymodbus names it)
            self, device_id: int, function_code: int, address: int, values: list[Any]) -> Any:
        from pymodbus.constants import ExcCodes

        refused = self._refused(device_id, function_code, address, len(values))
        if refused is not None:
            return refused
        if [int(v) for v in values] != [1]:
            self.state.refuse(f"modbus: refused a write of {[int(v) for v in values][:4]} at {address} "
                              f"(only 1 at {TRIGGER_REGISTER}, the trigger)")
            return ExcCodes.ILLEGAL_VALUE
        self._trigger("modbus")
        self.triggers += 1
        return None


class ModbusLine:
    """The unit as a Modbus TCP server (pymodbus), on its own asyncio thread."""

    name = "modbus"

    def __init__(self, state: LineState, *, host: str, port: int, device_id: int):
        self.state, self.host, self.port, self.device_id = state, host, port, device_id
        self._aio: AsyncThread | None = None
        self._server: Any = None
        self.registers: Registers | None = None

    @property
    def triggers(self) -> int:
        return self.registers.triggers if self.registers else 0

    async def _start(self, context: Registers) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        # The simulator's device only satisfies the constructor; every request goes to ``context``.
        device = SimDevice(self.device_id, simdata=[SimData(0, count=1, datatype=DataType.REGISTERS)])
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        self._server.context = context
        await self._server.serve_forever(background=True)

    def start(self, trigger: Trigger) -> None:
        self.registers = Registers(self.state, self.device_id, trigger)
        self._aio = AsyncThread("modbus")
        try:
            self._aio.call(self._start(self.registers))
        except Exception as e:
            self._aio.stop()
            self._aio = None
            raise OSError(f"modbus: cannot serve on {self.host}:{self.port}: {e}") from None
        log.info("modbus: serving on %s:%d, device id %d", self.host, self.port, self.device_id)

    def decided(self, v: PartVerdict) -> None:
        """Nothing to push: every read is filled from the line state at the moment it arrives."""

    def stop(self) -> None:
        if self._aio is not None:
            if self._server is not None:
                self._aio.call(self._server.shutdown())
            self._aio.stop()
            self._aio = None
