"""Home Assistant MQTT discovery: retained configs so a unit appears in HA with its sensors, no YAML needed.

Sent on every connect and again whenever Home Assistant announces ``<prefix>/status = online`` (HA restarted and
forgot its entities). Every entity reads the unit's own topics and follows its ``available`` topic.
"""

from __future__ import annotations

import json
from typing import Any

from contract import topics

# (component, object id, name, state topic suffix, value template, extra fields)
ENTITIES: tuple[tuple[str, str, str, str, str, dict[str, Any]], ...] = (
    ("sensor", "p_defect", "Defect probability", topics.RESULT, "{{ value_json.p_defect }}",
     {"state_class": "measurement"}),
    ("sensor", "label", "Last call", topics.RESULT, "{{ value_json.label }}", {}),
    ("binary_sensor", "defective", "Defective part", topics.RESULT,
     "{{ 'ON' if value_json.defective else 'OFF' }}", {"device_class": "problem"}),
    ("sensor", "fps", "Frames per second", topics.METRICS, "{{ value_json.fps }}",
     {"state_class": "measurement", "unit_of_measurement": "fps"}),
    ("sensor", "inference_p95", "Inference p95", topics.METRICS,
     "{{ value_json.latency_ms.inference.p95 if value_json.latency_ms.inference is defined else none }}",
     {"state_class": "measurement", "unit_of_measurement": "ms"}),
    ("sensor", "outbox_depth", "Outbox depth", topics.METRICS, "{{ value_json.outbox.depth }}",
     {"state_class": "measurement"}),
)


def discovery_messages(ha_prefix: str, base_topic: str, device_id: str, version: str,
                       model: str) -> list[tuple[str, bytes]]:
    """(topic, retained JSON payload) for every entity of this unit."""
    device = {"identifiers": [f"defect-edge-{device_id}"], "name": f"Inspection {device_id}",
              "model": f"defect-edge ({model})", "sw_version": version, "manufacturer": "defect-edge"}
    out = []
    for component, object_id, name, suffix, template, extra in ENTITIES:
        config = {"name": name, "unique_id": f"defect-edge-{device_id}-{object_id}",
                  "state_topic": f"{base_topic}/{suffix}", "value_template": template,
                  "availability_topic": f"{base_topic}/{topics.AVAILABLE}", "device": device, **extra}
        out.append((f"{ha_prefix}/{component}/defect-edge-{device_id}/{object_id}/config",
                    json.dumps(config, separators=(",", ":")).encode()))
    return out
