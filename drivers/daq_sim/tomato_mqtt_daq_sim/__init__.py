"""A simulated multi-channel DAQ card: the bulk data path, and array-valued data.

Each channel of a ``daq_sim`` device is a component. Like a real DAQ card, a channel
samples on its own clock and the driver reads its buffer: the device is a *bulk*
device (:attr:`~tomato_mqtt.driver.base.ModelDevice.block_interval`), asked every
``block_interval`` seconds (default 0.1 s, ``[drivers.daq_sim] block_interval``) for
every sample taken since the last read, as numpy columns with their own timestamps.

Techniques:

``acquire``
    one sample every ``sampling_interval`` (1e-4 s is 10 kHz) for ``max_duration``:
    ``voltage`` (V) = ``amplitude`` · sin(2π · ``frequency`` · t) + the channel number ·
    0.001 V. Exactly ``round(max_duration / sampling_interval)`` samples per task.
``spectrum``
    one power spectrum every ``sampling_interval``: ``power`` (dBm) over the extra
    dimension ``freq`` (``bins`` points from 1 to 100 MHz, in the driver's own spelling
    ``MHz``), plus the scalar ``peak_freq`` (MHz) — array-valued data, as a network or
    spectrum analyser gives it.

Attrs (all read-write): ``amplitude`` (V, default 1), ``frequency`` (Hz, default 50),
``bins`` (int, 2..4096, default 64).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from tomato_mqtt.driver import Attr, Block, ModelDevice, ModelInterface, TaskSpec

__all__ = ["Device", "DriverInterface"]


class Device(ModelDevice):
    amplitude: float
    frequency: float
    bins: int

    def __init__(self, driver: DriverInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        opts = {**driver.settings, **kwargs}
        self.block_interval = float(opts.get("block_interval", 0.1))
        try:
            self.offset = int(key[1]) * 0.001
        except ValueError:
            self.offset = 0.0
        self.constants["card"] = f"simulated DAQ at {key[0]}"
        self.amplitude = 1.0
        self.frequency = 50.0
        self.bins = 64
        self._taken = 0  # samples of the current task handed over so far
        self._task_start: float | None = None

    def attrs(self) -> dict[str, Attr]:
        return {
            "amplitude": Attr(float, rw=True, units="V", minimum=0.0, maximum=10.0),
            "frequency": Attr(float, rw=True, units="Hz", minimum=0.0, maximum=1e6),
            "bins": Attr(int, rw=True, minimum=2, maximum=4096),
        }

    def capabilities(self) -> set[str]:
        return {"acquire", "spectrum"}

    def do_task_block(self, task: TaskSpec, t_start: float, t_now: float) -> Block | None:
        if t_start != self._task_start:  # a new task: its own sample clock
            self._task_start = t_start
            self._taken = 0
        si = task.sampling_interval
        due = min(task.npoints, int((t_now - t_start) / si + 1e-9))
        if due <= self._taken:
            return None
        k = np.arange(self._taken + 1, due + 1, dtype=np.float64)
        self._taken = due
        uts = t_start + k * si
        if task.technique_name == "spectrum":
            return self._spectra(uts)
        volts = self.amplitude * np.sin(2 * math.pi * self.frequency * (k * si)) + self.offset
        return Block(uts=uts, data={"voltage": volts}, units={"voltage": "V"})

    def _spectra(self, uts: np.ndarray[Any, Any]) -> Block:
        freq = np.linspace(1.0, 100.0, self.bins)
        # a peak that wanders with time over a noise floor: one row per timestamp
        peak = 10.0 + 80.0 * (0.5 + 0.5 * np.sin(uts / 2.0))
        power = -90.0 + 60.0 * np.exp(-(((freq[None, :] - peak[:, None]) / 5.0) ** 2))
        return Block(
            uts=uts,
            data={"power": power, "peak_freq": peak},
            units={"power": "dBm", "peak_freq": "MHz", "freq": "MHz"},
            dims={"power": ["freq"]},
            coords={"freq": freq},
        )

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any] | None:
        return self.do_measure()

    def do_measure(self) -> Mapping[str, Any] | None:
        t = time.time()
        v = self.amplitude * math.sin(2 * math.pi * self.frequency * t) + self.offset
        return {"voltage": v}

    def do_set_attr(self, attr: str, val: Any) -> None:
        setattr(self, attr, val)

    def reset(self) -> None:
        self.amplitude = 1.0
        self.frequency = 50.0
        self.bins = 64


class DriverInterface(ModelInterface):
    """The ``daq_sim`` driver: one :class:`Device` per channel."""

    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Device:
        return Device(self, key, **kwargs)
