"""Modbus TCP: the unit serves holding registers a PLC polls, and a register it writes to trigger a part.

Register map (holding registers, function codes 3 to read and 6/16 to write, addresses from 0; ``docs/line.md``):

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
8     refused                writes refused from the line since start (wraps)
9     (reserved)             0
10    trigger                write 1 to trigger a part; any other value is refused (ILLEGAL DATA VALUE)
====  =====================  ====================================================================================

Registers 0-9 are read-only (a write gets ILLEGAL DATA ADDRESS, and is counted); they are filled from
:class:`~edge.io.LineState` at the moment of each read, so one read of 2-5 always shows one part's verdict.
"""

from __future__ import annotations

import logging
from typing import Any

from edge.io import STATE_CODES, VERDICT_CODES, LineState, Trigger
from edge.io.aio import AsyncThread
from edge.parts import PartVerdict

log = logging.getLogger(__name__)

TRIGGER_REGISTER = 10
READ_ONLY = 10  # registers 0..9
U16 = 0xFFFF


def registers(state: LineState) -> list[int]:
    """Registers 0-9 as a PLC reads them now."""
    s = state.snapshot()
    return [s.heartbeat & U16, STATE_CODES[s.state], s.seq & U16, VERDICT_CODES[s.verdict],
            round(s.p_defect * 1000), min(U16, round(s.trigger_to_verdict_ms)), s.missed & U16,
            min(U16, s.pending), s.refused & U16, 0]


class ModbusLine:
    """The unit as a Modbus TCP server (pymodbus), on its own asyncio thread."""

    name = "modbus"

    def __init__(self, state: LineState, *, host: str, port: int, device_id: int):
        self.state, self.host, self.port, self.device_id = state, host, port, device_id
        self._aio: AsyncThread | None = None
        self._server: Any = None
        self._trigger: Trigger | None = None
        self.triggers = 0

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: list[int] | list[bool] | None) -> Any:
        from pymodbus.constants import ExcCodes

        if set_values is None:  # a read: fill in the live values
            live = registers(self.state)
            for a in range(address, min(address + count, READ_ONLY)):
                current_registers[a - start_address] = live[a]
            if address <= TRIGGER_REGISTER < address + count:
                current_registers[TRIGGER_REGISTER - start_address] = 0
            return None
        values = [int(v) for v in set_values]
        if address != TRIGGER_REGISTER or values != [1]:
            self.state.refuse()
            log.warning("modbus: refused a write of %s at %d (only 1 at %d, the trigger)", values[:4], address,
                        TRIGGER_REGISTER)
            return ExcCodes.ILLEGAL_ADDRESS if address < READ_ONLY else ExcCodes.ILLEGAL_VALUE
        if self._trigger is not None:
            self._trigger("modbus")
            self.triggers += 1
        return None

    async def _start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        device = SimDevice(self.device_id, action=self._action, simdata=[
            # Writable to pymodbus, so every write reaches _action, which refuses and counts what it must.
            SimData(0, count=TRIGGER_REGISTER + 1, datatype=DataType.REGISTERS)])
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        await self._server.serve_forever(background=True)

    def start(self, trigger: Trigger) -> None:
        self._trigger = trigger
        self._aio = AsyncThread("modbus")
        try:
            self._aio.call(self._start())
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
