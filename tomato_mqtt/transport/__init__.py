"""The MQTT transport: the one paho client, request/reply, and the CLI's one-shot path."""
