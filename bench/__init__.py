"""Benchmarks: tomato-mqtt against tomato 2.2 (PyPI) and against raw MQTT, same run.

``python -m bench`` (or ``python3 scripts/dev.py bench``) prints the table;
``--quick`` for a short run, ``--only PREFIX`` for some rows. See docs/performance.md.
"""
