"""Configuration: settings.toml, devices.yml and payload files parsed into pydantic models.

No I/O beyond reading the files; validators raise ValueError with a message.
"""
