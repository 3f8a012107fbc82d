"""The product's contract layer: MQTT topics and payloads, shared settings, the MQTT client and SQLite helpers.

It imports nothing of the project (``make lint`` checks it), so the unit, the relay and the console build and read
the same messages with the same code. See ``docs/mqtt.md`` for the contract itself.
"""
