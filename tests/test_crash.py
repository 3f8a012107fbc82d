"""The unit killed while parts pass: no verdict the line could read is lost, and no part goes unreported.

`defect-edge run` as its own process, triggered by a real Modbus client (pymodbus) and watched over a real Mosquitto,
is sent SIGKILL 20 times at moments chosen to hurt: right after a PLC read a new verdict (its message may not be
stored yet), right after a trigger was acknowledged (the part is still being inspected), and at random.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from harness.broker import Broker, Collector
from harness.daemon import BASE, Daemon, config
from harness.wait import until
from tests.test_line import free_port

pytestmark = pytest.mark.processes

KILLS = 20


def _plc(port: int) -> Any:
    from pymodbus.client import ModbusTcpClient

    plc = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
    assert until(lambda: plc.connect() and _read(plc) is not None and _read(plc)[1] == 1, 30), \
        "the unit's Modbus server to answer, ready"
    return plc


def _read(plc: Any) -> list[int] | None:
    r = plc.read_holding_registers(0, count=10, device_id=1)
    return None if r.isError() else list(r.registers)


def test_sigkill_at_random_moments_loses_no_verdict(tmp_path: Path, broker: Broker, models_dir: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, broker.port, models_dir, inference={"mode": "on_demand"},
                 parts={"max_frame_delay_ms": 500, "debounce_ms": 0}, gradcam={"enabled": False},
                 line={"modbus": {"enabled": True, "host": "127.0.0.1", "port": port}})
    parts = Collector(broker.port, f"{BASE}/part")
    rng = random.Random(27)
    read: dict[int, int] = {}  # seq -> verdict code, as the PLC read them
    acknowledged = 0  # triggers the unit answered OK to: each is a part it promised to report
    moments = {"after_a_verdict_was_read": 0, "after_a_trigger": 0, "at_random": 0}
    daemon: Daemon | None = None
    try:
        for round_ in range(KILLS):
            daemon = Daemon(tmp_path, cfg).start()
            plc = _plc(port)
            moment = list(moments)[round_ % 3]
            kill_at = time.monotonic() + rng.uniform(0.1, 1.5)
            last = _read(plc)
            assert last is not None
            done = False
            while not done:
                assert not plc.write_register(10, 1, device_id=1).isError()
                acknowledged += 1
                if moment == "after_a_trigger" and time.monotonic() >= kill_at:
                    break
                polled = time.monotonic() + 0.3
                while time.monotonic() < polled:
                    regs = _read(plc)
                    assert regs is not None
                    if regs[2] != last[2]:
                        read[regs[2]] = regs[3]
                        last = regs
                        done = moment == "after_a_verdict_was_read"
                        break
                if moment == "at_random" and time.monotonic() >= kill_at:
                    done = True
            daemon.kill()
            plc.close()
            moments[moment] += 1
        daemon = Daemon(tmp_path, cfg).start()  # the last start publishes what the last kill left
        assert parts.wait(lambda m: len({json.loads(p)["part_id"] for _, p, _ in m}) >= acknowledged, 60), \
            (acknowledged, len(parts.messages), daemon.log()[-3000:])
    finally:
        if daemon is not None:
            daemon.kill()
    messages = [json.loads(p) for p in parts.on("/part")]
    by_id: dict[str, dict[str, Any]] = {}
    for m in messages:
        assert by_id.setdefault(m["part_id"], m) == m, "a part redelivered is the same message"
    by_seq = {m["seq"]: m for m in by_id.values()}
    assert len(by_seq) == len(by_id) == acknowledged, "one part per acknowledged trigger, numbered once each"
    assert sorted(by_seq) == list(range(1, acknowledged + 1)), "seq goes on across restarts, with no gap"
    codes = {"ok": 1, "ng": 2, "unsure": 3, "missed": 4}
    assert {s: codes[by_seq[s]["verdict"]] for s in read} == read, "every verdict a PLC read, as it read it"
    restarted = [m for m in by_id.values() if m["verdict"] == "missed" and "restart" in m.get("error", "")]
    assert restarted, "a part being inspected at a kill is reported missed, saying why"
    print(f"{KILLS} kills {moments}: {acknowledged} triggers, {len(read)} verdicts read by the PLC, all "
          f"{len(by_id)} parts reported ({len(restarted)} missed at a restart, "
          f"{len(messages) - len(by_id)} redelivered)")


def test_a_second_unit_with_the_same_id_is_said_and_one_whose_port_is_taken_exits_2(
        tmp_path: Path, broker: Broker, models_dir: Path, daemons: list[Daemon]) -> None:
    """Before: two units with one device id knocked each other off the broker in a loop, each saying only
    "disconnected: Unspecified error", and the second ran silently without Modbus, its port taken."""
    port = free_port()
    line = {"modbus": {"enabled": True, "host": "127.0.0.1", "port": port}}
    first = Daemon(tmp_path / "a", config(tmp_path / "a", broker.port, models_dir, inference={"mode": "on_demand"},
                                          line=line)).start()
    daemons.append(first)
    status = Collector(broker.port, f"{BASE}/status")
    assert status.wait(lambda m: len(m) >= 1, 30), first.log()
    second = Daemon(tmp_path / "b", config(tmp_path / "b", broker.port, models_dir,
                                           inference={"mode": "on_demand"}, line=line)).start()
    daemons.append(second)
    assert second.proc is not None and second.proc.wait(60) == 2, second.log()
    said = [x for x in second.log().splitlines() if "modbus: cannot serve" in x]
    assert len(said) == 1 and "not running without it" in said[0], second.log()
    third = Daemon(tmp_path / "c", config(tmp_path / "c", broker.port, models_dir)).start()  # no line: it runs
    daemons.append(third)
    twin = "another process is connected as device 'unit1'"
    assert until(lambda: twin in first.log() + third.log(), 60), (first.log()[-2000:], third.log()[-2000:])
    assert status.wait(lambda m: any("twin" in json.loads(p) for _, p, _ in m), 30), "the status says it too"
