"""A tomato 2.2 driver (``tomato.driverinterface_2_1``) for tests: a scalar ``val`` and
an array-valued ``spectrum`` (dimension ``freq``, with units) at every point; the
technique ``explode`` raises in ``do_task`` (which kills tomato's task thread);
``badname`` adds a variable ``I/V``, a name no NetCDF file keeps."""

import time

import pint
import xarray as xr
from tomato.driverinterface_2_1 import Attr, ModelDevice, ModelInterface
from tomato.driverinterface_2_1.decorators import coerce_val

FREQ = [1.0e6, 2.0e6, 3.0e6, 4.0e6]


class Device(ModelDevice):
    def __init__(self, driver, key, **kwargs):
        super().__init__(driver, key, **kwargs)
        self.gain = 1.0
        self.constants["model"] = "spectrum-test"

    def _point(self, t):
        uts = time.time()
        return xr.Dataset(
            data_vars={
                "val": (["uts"], [t], {"units": "s"}),
                "spectrum": (["uts", "freq"], [[self.gain * f * t for f in FREQ]], {"units": "dB"}),
            },
            coords={"uts": (["uts"], [uts]), "freq": (["freq"], FREQ, {"units": "Hz"})},
        )

    def do_task(self, task, t_start, t_now, **kwargs):
        if task.technique_name == "explode":
            raise RuntimeError("simulated instrument fault")
        self.last_data = self._point(t_now - t_start)
        if task.technique_name == "badname":
            self.last_data["I/V"] = (["uts"], [1.0])
        if self.data is None:
            self.data = self.last_data
        else:
            self.data = xr.concat([self.data, self.last_data], dim="uts")

    def do_measure(self, **kwargs):
        self.last_data = self._point(0.0)

    @coerce_val
    def set_attr(self, attr, val, **kwargs):
        setattr(self, attr, val)
        return val

    def get_attr(self, attr, **kwargs):
        return getattr(self, attr)

    def attrs(self, **kwargs):
        return {
            "gain": Attr(type=float, rw=True, status=True, minimum=0.0, maximum=pint.Quantity("10"))
        }

    def capabilities(self, **kwargs):
        return {"sweep", "explode", "badname"}


class DriverInterface(ModelInterface):
    def DeviceFactory(self, key, **kwargs):
        return Device(self, key, **kwargs)
