"""The relay's decisions about people, driven with its ``now=``: who is told at which hour, who is told again when
nobody reviews, and what the mail shows them (templates a plant can change, device text as text)."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from contract import payloads
from relay import config as relay_config
from relay import intake, mailer, notify
from relay.queue import Store
from relay.render import Renderer
from relay.storm import Scheduler, in_hours


def cfg_of(tmp: Path, routes: list[dict[str, Any]], **over: Any) -> relay_config.RelayConfig:
    return relay_config.parse({"state": {"dir": str(tmp)}, "delivery": {"evidence_wait_s": 0}, "time_zone": "UTC",
                               "console_url": "https://console.plant", "routes": routes, **over})


def accept(store: Store, kind: str, n: int, **extra: Any) -> str:
    frame = None if kind.startswith("camera") else f"line3-a-1-{n:09d}"
    a = payloads.Alert(device_id="line3-a", kind=kind, frame_id=frame,
                       dedup_key=f"line3-a:{kind}:{n}", label="defective", p_defect=0.9, confidence=0.9, **extra)
    store.accept_alert(a.dedup_key, "line3-a", kind, a.frame_id, payloads.dumps(a).decode())
    return a.dedup_key


def mails(store: Store) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(o.body, policy=email.policy.default)  # type: ignore[misc]
            for o in store.due(limit=100) if o.channel == "smtp"]


def test_an_unreviewed_alert_escalates_once_and_a_reviewed_one_never(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, [{"devices": ["line3-*"], "recipients": ["lead@plant.example"], "escalate_after_min": 10,
                             "escalate_to": ["manager@plant.example"]}], storm={"cooldown_s": 0})
    store = Store(tmp_path / "relay.db")
    sched = Scheduler(cfg, store, Renderer(cfg))
    now = time.time() + 1
    accept(store, "defect", 1)
    accept(store, "low_confidence", 2)
    sched.tick(now)
    assert [m["To"] for m in mails(store)] == ["lead@plant.example"] * 2
    store.add_review("line3-a", "line3-a-1-000000002", "right", "anna")  # the console announced it
    sched.tick(now + 599)
    assert len(mails(store)) == 2, "not before its time"
    sched.tick(now + 601)
    sched.tick(now + 1200)
    escalated = [m for m in mails(store) if m["To"] == "manager@plant.example"]
    assert len(escalated) == 1, "once, and only the unreviewed one"
    assert escalated[0]["Subject"] == "Not reviewed after 10 min: line3-a: defective part (sure, p 0.900)"
    html = escalated[0].get_body(("html",)).get_content()
    assert "https://console.plant/review?unit=line3-a&amp;frame=line3-a-1-000000001" in html
    assert store.counters()["escalations_sent"] == 1 and store.counters()["escalations_handled"] == 1
    store.close()


def test_a_camera_that_comes_back_is_not_escalated_and_one_that_stays_away_is(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, [{"kinds": ["camera_offline", "camera_back"], "recipients": ["maint@plant.example"],
                             "escalate_after_min": 5, "escalate_notify": ["json://127.0.0.1:9/hook"]}],
                 storm={"cooldown_s": 0})
    store = Store(tmp_path / "relay.db")
    sched = Scheduler(cfg, store, Renderer(cfg))
    now = time.time() + 1
    accept(store, "camera_offline", 1, since="2026-12-05T06:00:00.000Z")
    accept(store, "camera_offline", 2, since="2026-12-05T07:00:00.000Z")
    sched.tick(now)
    accept(store, "camera_back", 3, since="2026-12-05T06:00:00.000Z", offline_s=120.0)
    sched.tick(now + 1)
    sched.tick(now + 301)
    pushed = [json.loads(o.body) for o in store.due(limit=100) if o.channel == "apprise"]
    assert [p["title"] for p in pushed] == [
        "Not reviewed after 5 min: line3-a: camera offline since Sat 5 Dec 2026, 07:00 UTC"]
    assert "https://console.plant/units/line3-a" in pushed[0]["body"]
    assert [m["Subject"] for m in mails(store)] == [
        "line3-a: camera offline since Sat 5 Dec 2026, 06:00 UTC",
        "line3-a: camera offline since Sat 5 Dec 2026, 07:00 UTC", "line3-a: camera back after 2 min"]
    store.close()


def test_routes_tell_their_people_only_in_their_hours(tmp_path: Path) -> None:
    assert in_hours([], "03:00") and in_hours(["06:00-22:00"], "06:00") and not in_hours(["06:00-22:00"], "22:00")
    assert in_hours(["22:00-06:00"], "23:59") and in_hours(["22:00-06:00"], "05:59")
    assert not in_hours(["22:00-06:00"], "12:00")
    cfg = cfg_of(tmp_path, [{"recipients": ["day@plant.example"], "hours": ["06:00-22:00"]},
                            {"recipients": ["night@plant.example"], "hours": ["22:00-06:00"], "kinds": ["defect"]}],
                 storm={"cooldown_s": 0})
    store = Store(tmp_path / "relay.db")
    sched = Scheduler(cfg, store, Renderer(cfg))
    day = (time.time() // 86400 + 1) * 86400 + 8 * 3600  # tomorrow 08:00 UTC: after the alerts were received
    accept(store, "defect", 1)
    sched.tick(day)
    accept(store, "defect", 2)
    sched.tick(day + 15 * 3600)  # 23:00
    accept(store, "low_confidence", 3)
    sched.tick(day + 16 * 3600)  # midnight: only the night route is on, and it takes defects only
    assert [m["To"] for m in mails(store)] == ["day@plant.example", "night@plant.example"]
    assert store.counters()["alerts_out_of_hours"] == 1
    store.close()


def test_a_plants_template_replaces_ours_and_a_broken_one_stops_the_start(tmp_path: Path) -> None:
    own = tmp_path / "templates"
    own.mkdir()
    (own / "alert_subject.txt").write_text("QA {{ station }} {{ kind }}\n")
    cfg = cfg_of(tmp_path, [{"recipients": ["a@plant.example"]}], templates={"dir": str(own)},
                 stations={"line3-a": "Press 3"})
    Renderer(cfg).check()
    a = {"device_id": "line3-a", "kind": "defect", "frame_id": None, "dedup_key": "k", "ts": "2026-12-05T06:00:00Z"}
    assert Renderer(cfg).alert(a, []).subject == "QA Press 3 defect"
    (own / "digest.html").write_text("{% for p in parts %}{{ p.nonesuch }}{% endfor %}")
    with pytest.raises(relay_config.ConfigError, match=r"digest\.html"):
        Renderer(cfg).check()
    (own / "digest.html").write_text("{% if %}")
    with pytest.raises(relay_config.ConfigError, match=r"template digest\.html line 1"):
        Renderer(cfg).check()


def test_device_text_is_shown_as_text_in_html(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, [{"recipients": ["a@plant.example"]}])
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    a = {"device_id": "line3-a", "kind": "framing", "frame_id": "line3-a-1-000000001", "dedup_key": "k",
         "ts": "2026-12-05T06:00:00Z", "problems": [hostile], "model": hostile}
    msg = email.message_from_bytes(mailer.alert_mail(cfg, Renderer(cfg), a, {}, ["a@plant.example"]),
                                   policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert hostile in msg.get_body(("plain",)).get_content()


def test_reviews_from_the_console_are_read_strictly() -> None:
    good = payloads.dumps(payloads.Reviewed(device_id="console1", unit="line3-a", frame_id="line3-a-1-000000001",
                                            verdict="right", by="anna"))
    r = intake.parse_reviewed("defect-console", "defect-console/console1/reviewed", good)
    assert (r.unit, r.frame_id, r.by) == ("line3-a", "line3-a-1-000000001", "anna")
    for topic, payload, reason in (("defect-console/console2/reviewed", good, "device_mismatch"),
                                   ("defect-console/console1/other", good, "bad_topic"),
                                   ("defect-console/console1/reviewed", b"{", "not_json"),
                                   ("defect-console/console1/reviewed",
                                    good.replace(b"line3-a-1-000000001", b"../../x"), "bad_field")):
        with pytest.raises(intake.Rejected) as e:
            intake.parse_reviewed("defect-console", topic, payload)
        assert e.value.reason == reason, topic


def test_config_refuses_what_would_fail_later(tmp_path: Path) -> None:
    for route, words in (({"notify": ["nonesuch://x"]}, "not a notification URL"),
                         ({"hours": ["06:00-25:00"]}, "not a time of day"),
                         ({"hours": ["06:00"]}, "HH:MM-HH:MM"),
                         ({"escalate_after_min": 5}, "needs escalate_to")):
        with pytest.raises(relay_config.ConfigError, match=words):
            cfg_of(tmp_path, [{"recipients": ["a@plant.example"], **route}])
    with pytest.raises(relay_config.ConfigError, match="time zone"):
        cfg_of(tmp_path, [], time_zone="Mars/Olympus")
    with pytest.raises(relay_config.ConfigError, match="console's address"):
        cfg_of(tmp_path, [], console_url="javascript:alert(1)")


def test_check_config_renders_the_templates_and_names_a_broken_one(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from relay.cli import main

    own = tmp_path / "templates"
    own.mkdir()
    conf = tmp_path / "relay.toml"
    conf.write_text(f'[templates]\ndir = "{own}"\n[state]\ndir = "{tmp_path}"\n')
    assert main(["check-config", "--config", str(conf)]) == 0
    assert "templates rendered" in capsys.readouterr().out
    (own / "alert.html").write_text("<p>{{ headline }</p>\n")
    assert main(["check-config", "--config", str(conf)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("defect-relay: error: ") and "template alert.html line 1" in err and "\n" not in err


class Service(ThreadingHTTPServer):
    """A local HTTP server standing in for a chat or push service's API: keeps each request, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.status = status
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                srv.requests.append((self.command, self.path, dict(self.headers), body))
                self.send_response(srv.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            do_PUT = do_POST  # noqa: N815

        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


def test_channels_carry_the_words_and_the_picture_through_apprise() -> None:
    photo = b"\xff\xd8\xff\xe0" + b"part" * 100
    queued = notify.body("Press 3: defective part (sure, p 0.930)", "The unit called a part defective.\n"
                         "https://console.plant/review?unit=a&frame=f", photo, "f.jpg")
    srv = Service()
    try:
        notify.send(f"json://{srv.where}/hook", queued)
        notify.send(f"ntfy://{srv.where}/line3", queued)
        notify.send(f"gotify://{srv.where}/AbCdEfGhIjKlMnO", queued)
        (_, _, _, js), (ntfy_method, ntfy_path, ntfy_headers, ntfy_body), (_, gotify_path, _, gotify) = srv.requests
        posted = json.loads(js)
        assert posted["title"].startswith("Press 3") and "review?unit=a&frame=f" in posted["message"]
        assert base64.b64decode(posted["attachments"][0]["base64"]) == photo, "the picture, where it can go"
        assert ntfy_method in ("PUT", "POST") and ntfy_body == photo and "filename=f.jpg" in ntfy_path
        assert "review%3Funit%3Da%26frame%3Df" in ntfy_path or "review?unit=a&frame=f" in str(ntfy_headers)
        assert gotify_path == "/message" and json.loads(gotify)["title"].startswith("Press 3")
        srv.status = 503
        with pytest.raises(mailer.TransientError, match=r"^json:// notification failed: .*503"):
            notify.send(f"json://{srv.where}/hook", queued)
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(mailer.TransientError, match="json:// notification failed"):
        notify.send(f"json://{srv.where}/hook", queued, timeout_s=2)


def test_a_defects_mail_carries_one_time_links_when_the_plant_gives_a_key(tmp_path: Path) -> None:
    from contract import links

    key_file = tmp_path / "key"
    key_file.write_text("s" * 64)
    cfg = cfg_of(tmp_path, [{"recipients": ["lead@plant.example"]}], links={"key_file": str(key_file)})
    a = {"device_id": "line3-a", "kind": "defect", "frame_id": "line3-a-1-000000001", "dedup_key": "k",
         "ts": "2026-12-05T06:00:00Z", "label": "defective", "p_defect": 0.9, "confidence": 0.9}
    msg = email.message_from_bytes(mailer.alert_mail(cfg, Renderer(cfg), a, {}, ["lead@plant.example",
                                                                                "qa@plant.example"]),
                                   policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()
    urls = re.findall(r'class="quick" href="https://console\.plant/quick/([^"]+)"', html)
    assert len(urls) == 2
    made = [links.verify(key_file.read_bytes(), u) for u in urls]
    assert [(m.frame_id, m.verdict, m.to) for m in made] == [
        ("line3-a-1-000000001", "right", "lead@plant.example, qa@plant.example"),
        ("line3-a-1-000000001", "wrong_good", "lead@plant.example, qa@plant.example")]
    assert all(u in msg.get_body(("plain",)).get_content() for u in urls), "the plain text carries them too"
    camera = {**a, "kind": "camera_offline", "frame_id": None, "since": "2026-12-05T05:50:00Z"}
    assert "/quick/" not in mailer.alert_mail(cfg, Renderer(cfg), camera, {}, ["lead@plant.example"]).decode()
    bare = cfg_of(tmp_path, [{"recipients": ["lead@plant.example"]}])
    assert "/quick/" not in mailer.alert_mail(bare, Renderer(bare), a, {}, ["lead@plant.example"]).decode()
    with pytest.raises(relay_config.ConfigError, match="needs console_url"):
        Renderer(relay_config.parse({"state": {"dir": str(tmp_path)}, "links": {"key_file": str(key_file)}}))
