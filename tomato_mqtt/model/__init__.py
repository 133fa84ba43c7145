"""The domain model: jobs, their transitions and matching. Pure: no MQTT, no I/O."""
