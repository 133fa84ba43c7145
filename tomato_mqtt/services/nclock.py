"""One lock for every use of netCDF4 in a process.

netCDF-C and the HDF5 library under it are not thread-safe, and netCDF4-python lets go
of the GIL in its calls: three threads writing job files at once crashed the process
(Bus error) or left files that could not be read. A service that uses netCDF4 from more
than one thread holds :data:`NC_LOCK` around each use: the recorder writes files in
worker threads (two jobs that end together, its warm-up) and reads one to tell whose it
is; the dashboard reads files in worker threads for two pages at once.
"""

from __future__ import annotations

import threading

__all__ = ["NC_LOCK"]

#: held around every netCDF4 call sequence (open, read or write, close) of the process
NC_LOCK = threading.RLock()
