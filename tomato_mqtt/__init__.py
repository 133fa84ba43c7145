"""tomato-mqtt: laboratory instrument automation over MQTT."""

__version__ = "0.1.0"

__all__ = ["__version__"]
