"""Digital I/O on the unit: a part-present input as trigger, reject and OK pulses, and a ready output.

A thin adapter over gpiozero (on a Raspberry Pi it drives the pins through lgpio; on a Jetson, through a gpiozero
pin factory for Jetson.GPIO). No GPIO pins exist where the tests run: they drive it through gpiozero's own mock pin
factory, so the pin numbers, levels, debouncing and pulse timing are gpiozero's real code; only the silicon is not.

- ``trigger_pin``: a part sensor (a light barrier, an inductive sensor through an optocoupler). Each activation
  (debounced by ``trigger_bounce_ms``) triggers a part.
- ``reject_pin``: pulsed ``pulse_ms`` long for an NG verdict (and for unsure or missed ones with ``reject_unsure``),
  ``reject_delay_ms`` after the verdict: the belt's travel time from the camera to the ejector.
- ``ok_pin``: pulsed for an OK verdict, for a PLC that wants a positive answer for every part.
- ``ready_pin``: on while the unit can inspect (the inference loop beats, the camera streams, a model is loaded);
  off otherwise, and off when the unit stops or the loop has not beaten for two seconds.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from edge.io.state import LineState, Trigger
from edge.parts import PartVerdict

log = logging.getLogger(__name__)


class GpioLine:
    name = "gpio"

    def __init__(self, state: LineState, *, trigger_pin: int | None, trigger_active_high: bool,
                 trigger_bounce_ms: float, reject_pin: int | None, ok_pin: int | None, ready_pin: int | None,
                 pulse_ms: float, reject_delay_ms: float, reject_unsure: bool, pin_factory: Any = None):
        self.state = state
        self.pins = {"trigger": trigger_pin, "reject": reject_pin, "ok": ok_pin, "ready": ready_pin}
        self.trigger_active_high, self.bounce_s = trigger_active_high, trigger_bounce_ms / 1e3
        self.pulse_s, self.delay_s, self.reject_unsure = pulse_ms / 1e3, reject_delay_ms / 1e3, reject_unsure
        self.pin_factory = pin_factory
        self._devices: dict[str, Any] = {}
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self.triggers = 0

    def start(self, trigger: Trigger) -> None:
        try:
            from gpiozero import DigitalInputDevice, DigitalOutputDevice
        except ImportError:
            raise OSError("gpio: gpiozero is not installed (pip install 'defect-inspection[line]')") from None
        kw = {"pin_factory": self.pin_factory} if self.pin_factory is not None else {}
        try:
            if self.pins["trigger"] is not None:
                # The SoC's own pull resistor holds the idle level: pull-up for an active-low input (an
                # optocoupler's open collector), pull-down for an active-high one.
                sensor = DigitalInputDevice(self.pins["trigger"], pull_up=not self.trigger_active_high,
                                            bounce_time=self.bounce_s or None, **kw)

                def pressed() -> None:
                    self.triggers += 1
                    trigger("gpio")

                sensor.when_activated = pressed
                self._devices["trigger"] = sensor
            for name in ("reject", "ok", "ready"):
                if self.pins[name] is not None:
                    self._devices[name] = DigitalOutputDevice(self.pins[name], **kw)
        except Exception as e:  # gpiozero raises its own errors for a busy pin, a missing chip, no factory
            self.stop()
            raise OSError(f"gpio: {type(e).__name__}: {e}") from None
        if "ready" in self._devices:
            self._watch = threading.Thread(target=self._watch_ready, name="gpio-ready", daemon=True)
            self._watch.start()
        log.info("gpio: %s", ", ".join(f"{k} on GPIO{v}" for k, v in self.pins.items() if v is not None))

    def _watch_ready(self) -> None:
        ready = self._devices["ready"]
        while not self._stop.wait(0.1):
            want = self.state.state() == "ready"
            if bool(ready.value) != want:
                ready.value = want

    def _pulse(self, name: str) -> None:
        device = self._devices.get(name)
        if device is None:
            return
        if self.delay_s <= 0:
            device.blink(on_time=self.pulse_s, off_time=0, n=1, background=True)
            return
        timer = threading.Timer(self.delay_s, self._fire, args=(name,))
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def _fire(self, name: str) -> None:
        with self._lock:
            self._timers = {t for t in self._timers if t.is_alive() and t is not threading.current_thread()}
        if not self._stop.is_set():
            self._devices[name].blink(on_time=self.pulse_s, off_time=0, n=1, background=True)

    def decided(self, v: PartVerdict) -> None:
        reject = v.verdict == "ng" or (self.reject_unsure and v.verdict in ("unsure", "missed"))
        self._pulse("reject" if reject else "ok")

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for t in self._timers:
                t.cancel()
        if self._watch is not None:
            self._watch.join(timeout=1)
        for device in self._devices.values():
            device.close()
        self._devices.clear()
