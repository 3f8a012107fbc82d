"""MQTT: topic names (shared with the relay), the store-and-forward outbox, the broker link and commands."""
