"""What a mail or a notification says, as the person who gets it reads it: the station by its name, the verdict and
how sure the unit was in words, the time in the plant's zone, the pictures inline, one link to the console, and the
technical ids last.

The wording lives in Jinja2 templates (``relay/templates``, overridable one file at a time from ``templates.dir``);
this module computes the facts they show, so a plant changes how a mail looks without touching what it means.
HTML templates are autoescaped (a device's text is shown as text); every template is rendered against an example of
each kind of alert at start (:meth:`Renderer.check`), so a broken template stops the relay with its name instead of
the first real alert.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import jinja2

from contract import links, topics
from relay.config import ConfigError, RelayConfig

HERE = Path(__file__).resolve().parent / "templates"
TEMPLATES = ("alert_subject.txt", "alert.txt", "alert.html", "digest_subject.txt", "digest.txt", "digest.html",
             "notification.txt")

LISTED = 50  # a digest lists this many of its alerts, then says how many more

# The pictures of an alert, in the order a mail shows them, with what each one is.
CAPTIONS = {"snapshot": "The part as the model saw it", "frame": "The whole frame, the part boxed",
            "gradcam": "Where the model looked (Grad-CAM)"}

# Each kind: a headline for subjects and the sentence that says what it means and what to do.
KINDS = {
    "defect": ("Defective part", "The unit called a part defective."),
    "low_confidence": ("Part to look at", "The unit was unsure about a part: a person should look at it and say "
                                          "whether it is good."),
    "camera_offline": ("Camera offline", "The unit has no frames from its camera, so it is not inspecting. Check "
                                         "the camera, its cable and the unit's journal."),
    "camera_back": ("Camera back", "The camera is delivering frames again; the unit is inspecting."),
    "model_error": ("Model failing", "The model failed on frames: those parts were not inspected. The unit's journal "
                                     "has the details."),
    "framing": ("Parts framed unlike training", "The parts are framed unlike the photos the model was trained on, "
                                                "so its verdicts may be wrong. What differs, and what to change:"),
    "unfamiliar_input": ("Unfamiliar parts", "Several parts in a row look unlike anything the model was trained on "
                                             "(a new part type, other lighting, a moved camera?): its verdicts on them "
                                             "are not to be trusted."),
}
assert set(KINDS) == set(topics.ALERT_KINDS), "every kind of alert reads as what it is"


def cid(name: str, frame_id: str) -> str:
    """The Content-ID of one picture of a mail (an addr-spec, as RFC 2392 asks; frame ids are topic-safe)."""
    return f"{name}.{frame_id or 'alert'}@defect-relay"


def confidence_words(confidence: float | None) -> str:
    """How sure the unit was, as a line lead would say it (confidence is max(p, 1 - p))."""
    if confidence is None:
        return ""
    return ("almost certain" if confidence >= 0.99 else "sure" if confidence >= 0.9
            else "fairly sure" if confidence >= 0.75 else "unsure")


def duration_words(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s"
    m = round(s / 60)
    return f"{m} min" if m < 120 else f"{m // 60} h {m % 60} min"


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


class Renderer:
    def __init__(self, cfg: RelayConfig):
        self.cfg = cfg
        self.zone: tzinfo | None = ZoneInfo(cfg.time_zone) if cfg.time_zone else None
        self.link_key: bytes | None = None
        if cfg.links.key_file is not None:
            if not cfg.console_url:
                raise ConfigError("links.key_file needs console_url: the links open the console")
            try:
                self.link_key = links.read_key(cfg.links.key_file)
            except (OSError, ValueError) as e:
                raise ConfigError(f"links.key_file: {e}") from None
        dirs = ([str(cfg.templates.dir)] if cfg.templates.dir else []) + [str(HERE)]
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(dirs), undefined=jinja2.StrictUndefined,
                                      autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True)

    # -- facts ---------------------------------------------------------------------------------------------------
    def station(self, device_id: str) -> str:
        return self.cfg.stations.get(device_id, device_id)

    def when(self, epoch: float, *, seconds: bool = True) -> str:
        """``Sat 5 Dec 2026, 07:42:10 CET``, in the plant's zone (the machine's own when none is set)."""
        t = datetime.fromtimestamp(epoch, timezone.utc).astimezone(self.zone)
        clock = f"{t:%H:%M:%S}" if seconds else f"{t:%H:%M}"
        return f"{t:%a} {t.day} {t:%b %Y}, {clock} {t:%Z}"

    def link(self, path: str, query: dict[str, str] | None = None) -> str:
        if not self.cfg.console_url:
            return ""
        return self.cfg.console_url + path + (f"?{urlencode(query)}" if query else "")

    def alert_link(self, a: dict[str, Any]) -> str:
        """The part's review page for a call on a part; the alert's page for the rest with a frame; the unit's."""
        device = a["device_id"]
        if a.get("frame_id") and a["kind"] in ("defect", "low_confidence"):
            return self.link("/review", {"unit": device, "frame": a["frame_id"]})
        if a.get("frame_id"):
            return self.link(f"/alerts/{quote(a['dedup_key'], safe='')}")
        return self.link(f"/units/{device}")

    def _epoch(self, a: dict[str, Any]) -> float:
        try:
            return topics.epoch(a["ts"])
        except (KeyError, TypeError, ValueError):
            return float(a.get("received") or 0.0)

    def quick(self, a: dict[str, Any], to: str) -> list[tuple[str, str]]:
        """A defect's one-time links, (label, URL): its call right, or a false alarm (the part was good)."""
        if self.link_key is None or a["kind"] != "defect" or not a.get("frame_id"):
            return []
        valid = self.cfg.links.valid_h * 3600
        return [(label, self.link(f"/quick/{links.sign(self.link_key, a['device_id'], a['frame_id'], v, to, valid)}"))
                for label, v in (("Right: defective", "right"), ("False alarm: it is good", "wrong_good"))]

    def alert_facts(self, a: dict[str, Any], images: list[str], escalated_after_min: float | None,
                    to: str = "") -> dict[str, Any]:
        headline, meaning = KINDS[a["kind"]]
        p, conf = a.get("p_defect"), a.get("confidence")
        since = a.get("since")
        since_epoch = topics.epoch(since) if since else None
        at = self._epoch(a)
        return {
            "kind": a["kind"], "headline": headline, "meaning": meaning, "station": self.station(a["device_id"]),
            "device_id": a["device_id"], "when": self.when(at), "label": a.get("label") or "",
            "p_defect": f"{p:.3f}" if isinstance(p, (int, float)) else "",
            "threshold": a.get("threshold"), "sure": confidence_words(conf), "model": a.get("model") or "",
            "part_id": a.get("part_id") or "", "frame_id": a.get("frame_id") or "", "dedup_key": a["dedup_key"],
            "error": a.get("error") or "", "problems": list(a.get("problems") or []),
            "frame_errors": a.get("frame_errors"), "ood": a.get("ood"), "ood_threshold": a.get("ood_threshold"),
            "since": self.when(since_epoch, seconds=False) if since_epoch else "",
            "away": duration_words(a["offline_s"]) if a.get("offline_s") is not None
            else duration_words(at - since_epoch) if since_epoch else "",
            "link": self.alert_link(a),
            "images": [(cid(k, a.get("frame_id") or ""), CAPTIONS[k]) for k in CAPTIONS if k in images],
            "escalated_after_min": escalated_after_min, "ts": a.get("ts") or "",
            "waited": duration_words(escalated_after_min * 60) if escalated_after_min else "",
            "quick": self.quick(a, to) if to else [], "quick_valid": duration_words(self.cfg.links.valid_h * 3600),
        }

    # -- mails ---------------------------------------------------------------------------------------------------
    def _render(self, name: str, facts: dict[str, Any]) -> str:
        return self.env.get_template(name).render(facts)

    def _subject(self, name: str, facts: dict[str, Any]) -> str:
        return " ".join(self._render(name, facts).split())[:250]  # one line, whatever the template or the device

    def alert(self, a: dict[str, Any], images: list[str], escalated_after_min: float | None = None,
              to: str = "") -> Rendered:
        """``to``: the mail's recipients, named in its one-time links (and none without them)."""
        f = self.alert_facts(a, images, escalated_after_min, to)
        return Rendered(self._subject("alert_subject.txt", f), self._render("alert.txt", f),
                        self._render("alert.html", f))

    def notification(self, a: dict[str, Any], escalated_after_min: float | None = None) -> tuple[str, str]:
        """(title, body) for a chat or push channel: the subject and a few lines, the link last."""
        f = self.alert_facts(a, [], escalated_after_min)
        return self._subject("alert_subject.txt", f), self._render("notification.txt", f).strip()

    def digest(self, device_id: str, kind: str, alerts: list[dict[str, Any]], thumbs: list[str]) -> Rendered:
        """``thumbs``: the frame ids whose thumbnails the mail carries (Content-ID ``cid("thumb", frame_id)``)."""
        f = self.digest_facts(device_id, kind, alerts, thumbs)
        return Rendered(self._subject("digest_subject.txt", f), self._render("digest.txt", f),
                        self._render("digest.html", f))

    def digest_facts(self, device_id: str, kind: str, alerts: list[dict[str, Any]],
                     thumbs: list[str]) -> dict[str, Any]:
        first, last = alerts[0], alerts[-1]
        counts = collections.Counter(a.get("label") or kind for a in alerts)
        parts = [{"frame_id": a.get("frame_id") or "", "part_id": a.get("part_id") or "",
                  "label": a.get("label") or kind, "p_defect": f"{a['p_defect']:.3f}" if a.get("p_defect") else "",
                  "when": self.when(self._epoch(a)).split(", ")[-1], "link": self.alert_link(a),
                  "thumb": cid("thumb", a["frame_id"]) if a.get("frame_id") in thumbs else ""}
                 for a in alerts[:LISTED]]
        span = max(0.0, float(last["received"]) - float(first["received"]))
        link = self.link("/review", {"unit": device_id, "kind": kind}) if kind in ("defect", "low_confidence") \
            else self.link("/alerts", {"unit": device_id, "kind": kind})
        return {"kind": kind, "headline": KINDS[kind][0], "meaning": KINDS[kind][1], "station": self.station(device_id),
                "device_id": device_id, "count": len(alerts), "counts": sorted(counts.items()),
                "span": duration_words(span), "first": self.when(self._epoch(first)),
                "last": self.when(self._epoch(last)), "parts": parts, "more": max(0, len(alerts) - LISTED),
                "cooldown": duration_words(self.cfg.storm.cooldown_s), "link": link}

    def check(self) -> None:
        """Render every template against an example of every kind; ConfigError naming the template otherwise."""
        now = topics.iso(1_780_000_000.0)
        for kind in topics.ALERT_KINDS:
            a: dict[str, Any] = {"device_id": "station1", "kind": kind, "ts": now, "received": 1_780_000_000.0,
                 "frame_id": "station1-1-000000001", "dedup_key": f"station1:{kind}:1", "label": "defective",
                 "p_defect": 0.93, "confidence": 0.93, "threshold": 0.5, "model": "model", "since": now,
                 "offline_s": 240.0, "error": "error", "frame_errors": 3, "problems": ["problem"], "ood": 2.0,
                 "ood_threshold": 1.0, "part_id": "station1-1-000000001"}
            facts = [self.alert_facts(a, list(CAPTIONS), None, "lead@plant.example"), self.alert_facts(a, [], 15.0)]
            digest = self.digest_facts("station1", kind, [a, a], ["station1-1-000000001"])
            for name in TEMPLATES:
                for f in [digest] if name.startswith("digest") else facts:
                    try:
                        self._render(name, f)
                    except jinja2.TemplateError as e:
                        line = getattr(e, "lineno", None)
                        raise ConfigError(f"template {name}{f' line {line}' if line else ''} ({kind} alert): "
                                          f"{e.message or e}") from None
