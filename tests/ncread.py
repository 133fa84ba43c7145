"""Reading a job's NetCDF file in a test whose recorder runs in the same process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

from tomato_mqtt.nclock import NC_LOCK


def load_tree(path: str | Path) -> Any:
    """``xr.open_datatree(path)``, read whole and closed under the process's netCDF lock:
    an in-process recorder may be writing a file meanwhile (its warm-up, a late merge),
    and netCDF4 is not thread-safe (tomato_mqtt/nclock.py). The tree's values stay in
    memory; closing it again is harmless."""
    with NC_LOCK:
        dt = xr.open_datatree(path, engine="netcdf4")
        try:
            dt.load()
        finally:
            dt.close()
    return dt
