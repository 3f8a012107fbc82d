"""The relay's mails as the people who get them see them: a real relay, console, Mosquitto and SMTP server, units
simulated on the broker with casting photos as their parts, and each kind of mail opened in headless Chromium at
phone and desktop width (screenshots under ``var/screenshots/mail-*``). The mail's pictures are shown the way a mail
client shows them (its ``cid:`` references resolved to the parts of the message), its link is followed through the
console's login, and escalation runs against the console's real reviews."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import cv2
import pytest

from contract import payloads, topics
from converter import synth
from harness.broker import Broker, Collector
from harness.browser import DESKTOP, PHONE, shot
from harness.console import PASSWORD, ConsoleProc
from harness.data import casting_present, casting_sample
from harness.relay import RelayProc
from harness.smtp import Smtp
from harness.units import SimUnit
from harness.wait import until

pytestmark = pytest.mark.processes
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"
ESCALATE_MIN = 0.5


def part_photos(n: int) -> list[bytes]:
    """The parts' pictures: casting photos (a real line's parts) when the data set is here, synthetic ones else."""
    if casting_present():
        return [p.read_bytes() for p in casting_sample(n)]
    print(f"casting photos absent: mails show synthetic parts ({n})")
    return [bytes(cv2.imencode(".jpg", synth.render(i, 3, size=300, defect="crack").image)[1].tobytes())
            for i in range(n)]


def boxed(jpeg: bytes) -> bytes:
    """A whole frame with the part's box, as a unit sends beside a crop."""
    img = cv2.imdecode(__import__("numpy").frombuffer(jpeg, "uint8"), cv2.IMREAD_COLOR)
    frame = cv2.copyMakeBorder(img, 60, 60, 200, 200, cv2.BORDER_CONSTANT, value=(40, 40, 40))
    cv2.rectangle(frame, (200, 60), (200 + img.shape[1], 60 + img.shape[0]), (0, 255, 0), 3)
    return bytes(cv2.imencode(".jpg", frame)[1].tobytes())


def as_a_mail_client_shows_it(msg: EmailMessage) -> str:
    """The HTML part with every ``cid:`` picture inlined from the message's own parts; an unresolved reference
    stays as it is, and its image then fails to load (which the test sees)."""
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for part in msg.walk():
        cid = part.get("Content-ID")
        if cid and part.get_content_maintype() == "image":
            data = base64.b64encode(part.get_payload(decode=True)).decode()
            html = html.replace(f"cid:{cid.strip('<>')}", f"data:{part.get_content_type()};base64,{data}")
    return html


def publish_alert(pub: Collector, device: str, kind: str, n: int, **fields: Any) -> str:
    a = payloads.Alert(device_id=device, kind=kind, dedup_key=f"{device}:{kind}:{n}", **fields)
    pub.client.publish(f"defect-edge/{device}/alert", payloads.dumps(a), qos=1)
    return a.dedup_key


def evidence(pub: Collector, device: str, frame: str, photo: bytes, *, whole: bool = False) -> None:
    pub.client.publish(f"defect-edge/{device}/snapshot/{frame}", photo, qos=1)
    pub.client.publish(f"defect-edge/{device}/gradcam/{frame}", heat(photo), qos=1)
    if whole:
        pub.client.publish(f"defect-edge/{device}/frame/{frame}", boxed(photo), qos=1)


def heat(jpeg: bytes) -> bytes:
    np = __import__("numpy")
    img = cv2.imdecode(np.frombuffer(jpeg, "uint8"), cv2.IMREAD_COLOR)
    grey = cv2.GaussianBlur(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (0, 0), 15)
    return bytes(cv2.imencode(".jpg", cv2.addWeighted(img, 0.55, cv2.applyColorMap(grey, cv2.COLORMAP_JET), 0.45,
                                                       0))[1].tobytes())


@pytest.fixture
def plant(tmp_path: Path, broker: Broker) -> Iterator[tuple[ConsoleProc, RelayProc, Smtp, Collector]]:
    console = ConsoleProc(tmp_path / "console", broker.port).start()
    smtp = Smtp().start()
    relay = RelayProc(tmp_path / "relay", {
        "console_url": console.url, "time_zone": "Europe/Berlin",
        "stations": {"line3-a": "Line 3, after the press", "line3-b": "Line 3, deburring"},
        "metrics_interval_s": 1,
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none", "from": "relay@plant.example"},
        "delivery": {"evidence_wait_s": 5, "backoff_initial_s": 0.5, "backoff_max_s": 1},
        "storm": {"cooldown_s": 120, "digest_window_s": 4, "thumbnails": 6},
        "state": {"dir": str(tmp_path / "relay" / "state")},
        "routes": [{"devices": ["*"], "recipients": ["lead3@plant.example"], "escalate_after_min": ESCALATE_MIN,
                    "escalate_to": ["manager@plant.example"]}]}).start()
    pub = Collector(broker.port, "defect-relay/#", persistent=False)
    try:
        assert pub.wait(lambda m: any(t.endswith("/available") and p == b"online" for t, p, _ in m), 20), relay.text()
        yield console, relay, smtp, pub
    finally:
        pub.close()
        relay.kill()
        smtp.stop()
        console.kill()


def test_each_kind_of_mail_reads_at_phone_width_links_to_its_part_and_escalates_unless_reviewed(
        browser: Any, plant: tuple[ConsoleProc, RelayProc, Smtp, Collector]) -> None:
    console, relay, smtp, pub = plant
    photos = part_photos(8)
    a, b = SimUnit(pub.client, "line3-a", model="casting-cnn int8"), SimUnit(pub.client, "line3-b")
    for u in (a, b):
        u.online()
    reviewed_unit = SimUnit(pub.client, "line3-c")
    now = topics.iso(time.time())

    # A defective part, with its crop, whole frame and heatmap: the first alert.
    frame_a = "line3-a-1795660000-000000001"
    evidence(pub, "line3-a", frame_a, photos[0], whole=True)
    publish_alert(pub, "line3-a", "defect", 1, frame_id=frame_a, part_id=frame_a, label="defective", p_defect=0.97,
                  confidence=0.97, threshold=0.5, model="casting-cnn int8", ts=now)
    # One that someone reviews in the console at once: it must never escalate.
    frame_c = "line3-c-1795660000-000000001"
    reviewed_unit.alert(frame_c, 0.91)
    # A storm on another station: its first mail, then one digest with thumbnails.
    for i in range(6):
        frame = f"line3-b-1795660000-{i:09d}"
        evidence(pub, "line3-b", frame, photos[1 + i % 6])
        publish_alert(pub, "line3-b", "defect", i, frame_id=frame, part_id=frame, label="defective",
                      p_defect=0.8 + i / 50, confidence=0.8 + i / 50, threshold=0.5, model="casting-cnn int8")
    # The camera gone (with hostile text in its error) and back; unfamiliar parts.
    since = topics.iso(time.time() - 250)
    publish_alert(pub, "line3-a", "camera_offline", 2, frame_id=None, since=since, error=HOSTILE)
    publish_alert(pub, "line3-a", "camera_back", 3, frame_id=None, since=since, offline_s=251.0)
    frame_u = "line3-a-1795660000-000000009"
    evidence(pub, "line3-a", frame_u, photos[7])
    publish_alert(pub, "line3-a", "unfamiliar_input", 4, frame_id=frame_u, ood=2.31, ood_threshold=1.2,
                  model="casting-cnn int8")

    def subjects() -> list[str]:
        return [str(m["Subject"]) for _, m in smtp.sink.mails]

    def mail(words: str, to: str = "lead3@plant.example") -> EmailMessage:
        found = [m for rcpt, m in smtp.sink.mails if words in str(m["Subject"]) and rcpt == [to]]
        assert len(found) == 1, (words, subjects())
        return found[0]  # type: ignore[return-value]

    kinds = {"alert": "Line 3, after the press: defective part", "digest": " × defective part in ",
             "camera-offline": "camera offline since", "camera-back": "camera back after",
             "unfamiliar": "unfamiliar parts", "reviewed": "line3-c: defective part"}
    assert until(lambda: all(any(w in s for s in subjects()) for w in kinds.values()), 40), subjects()

    # Review line3-c's part in the console, through its mail's link, before its escalation is due.
    page = browser.new_page(viewport=PHONE)
    page.set_content(as_a_mail_client_shows_it(mail(kinds["reviewed"])))
    link = page.locator("#console-link").get_attribute("href")
    assert link == f"{console.url}/review?unit=line3-c&frame={frame_c}"
    page.goto(link)
    assert "/login" in page.url, "the link carries no secret: a login first"
    page.fill("input[name=name]", "op")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(link)
    assert page.locator("#current").get_attribute("data-frame") == frame_c, "the part the mail was about"
    page.click("button[value=right]")
    page.locator(f'#current:not([data-frame="{frame_c}"]), p.note:has-text("Nothing to review")').first.wait_for()
    page.close()

    # Each kind at phone and desktop width: pictures inline and loaded, device text as text, the link right.
    for name, words in kinds.items():
        if name == "reviewed":
            continue
        msg = mail(words)
        for width, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
            page = browser.new_page(viewport=viewport)
            dialogs: list[str] = []
            page.on("dialog", lambda d, seen=dialogs: (seen.append(d.message), d.dismiss()))
            page.set_content(as_a_mail_client_shows_it(msg))
            images = page.locator("img.evidence")
            assert page.evaluate("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"), name
            if width == "phone":
                assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), \
                    f"{name} scrolls sideways at phone width"
            shot(page, f"mail-{name}-{width}")
            assert dialogs == [] and page.locator("script").count() == 0, "no script from a device runs"
            if name in ("alert", "digest", "unfamiliar"):
                assert images.count() >= (3 if name == "alert" else 1), name
            assert page.locator("#console-link").get_attribute("href") == {
                "alert": f"{console.url}/review?unit=line3-a&frame={frame_a}",
                "digest": f"{console.url}/review?unit=line3-b&kind=defect",
                "unfamiliar": f"{console.url}/alerts/line3-a%3Aunfamiliar_input%3A4"}.get(
                    name, f"{console.url}/units/line3-a"), name
            page.close()
    alert_html = mail(kinds["alert"]).get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert alert_html.index("Defective part") < alert_html.index("cid:") < alert_html.index(f"frame {frame_a}"), \
        "what matters first, the pictures, technical ids last"
    offline = mail(kinds["camera-offline"])
    page = browser.new_page(viewport=PHONE)
    page.set_content(as_a_mail_client_shows_it(offline))
    assert page.locator(".device-text").inner_text() == HOSTILE, "hostile device text shown as text"
    page.close()
    assert HOSTILE in offline.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    digest = mail(kinds["digest"])
    assert str(digest["Subject"]).startswith("Line 3, deburring: 5 × defective part in ")
    assert len([p for p in digest.walk() if p.get_content_maintype() == "image"]) == 5

    # Escalation: line3-a's part and line3-b's first were not reviewed; line3-c's was, and the camera came back.
    def counters() -> dict[str, int]:
        status = [json.loads(p) for t, p, _ in pub.messages if t.endswith(("/status", "/metrics"))]
        return status[-1]["counters"] if status else {}

    def escalated() -> list[str]:
        return sorted(str(m["Subject"]) for rcpt, m in smtp.sink.mails if rcpt == ["manager@plant.example"])

    assert until(lambda: len(escalated()) >= 2, ESCALATE_MIN * 60 + 30), (escalated(), relay.text())
    assert until(lambda: counters().get("escalations_handled", 0) >= 2, 10), counters()
    assert escalated() == ["Not reviewed after 30 s: Line 3, after the press: defective part (sure, p 0.970)",
                           "Not reviewed after 30 s: Line 3, deburring: defective part (fairly sure, p 0.800)"]
    page = browser.new_page(viewport=PHONE)
    page.set_content(as_a_mail_client_shows_it(mail("Line 3, after the press: defective part",
                                                    to="manager@plant.example")))
    assert page.locator("#escalated").is_visible()
    shot(page, "mail-escalation-phone")
    page.close()
    assert counters()["escalations_sent"] == 2 and counters().get("reviews_heard") == 1
    assert len(escalated()) == 2, "the handled ones never go out"
