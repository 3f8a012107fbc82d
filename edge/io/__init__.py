"""The line's own wires: a part sensor and a reject output on GPIO, a PLC over Modbus TCP or OPC UA.

Every interface shows the same :class:`LineState`, the one copy of what the unit tells the line, and may trigger
parts. Each is optional (``[line.*]`` in ``edge.toml``) and isolated: a PLC that disappears, never reads, or writes
garbage is refused and counted, and never stops inspection (``docs/line.md``).
"""

from __future__ import annotations

from typing import Any

from edge.config import LineConfig
from edge.io.state import LineInterface, LineState

__all__ = ["LineInterface", "LineState", "line_interfaces"]


def line_interfaces(line: LineConfig, state: LineState, *, pin_factory: Any = None) -> list[LineInterface]:
    """The configured line interfaces, not started. ``pin_factory``: gpiozero's, for tests and benchmarks."""
    out: list[LineInterface] = []
    if line.gpio.enabled:
        from edge.io.gpio import GpioLine

        g = line.gpio
        out.append(GpioLine(state, trigger_pin=g.trigger_pin, trigger_active_high=g.trigger_active_high,
                            trigger_bounce_ms=g.trigger_bounce_ms, reject_pin=g.reject_pin, ok_pin=g.ok_pin,
                            ready_pin=g.ready_pin, pulse_ms=g.pulse_ms, reject_delay_ms=g.reject_delay_ms,
                            reject_unsure=g.reject_unsure, pin_factory=pin_factory))
    if line.modbus.enabled:
        from edge.io.modbus import ModbusLine

        out.append(ModbusLine(state, host=line.modbus.host, port=line.modbus.port,
                              device_id=line.modbus.device_id))
    if line.opcua.enabled:
        from edge.io.opcua import OpcUaLine

        out.append(OpcUaLine(state, endpoint=line.opcua.endpoint, namespace=line.opcua.namespace))
    return out
