"""One lock for every use of netCDF4 in a process.

netCDF-C and the HDF5 library under it are not thread-safe, and netCDF4-python lets go
of the GIL in its calls: three threads writing job files at once crashed the process
(SIGSEGV/SIGBUS), as did a thread reading a file with xarray while another wrote one.
Every use of netCDF4 in tomato-mqtt holds :data:`NC_LOCK` (open, read or write, close):
the recorder's writes (in a worker thread, alongside its warm-up at start), its check of
whose an existing file is, the dashboard's reads (a worker thread per page) and the
client library's (a script may run a recorder in the same process, as the tests do).
Here, not in one service: the client, a lower layer, needs it too.
"""

from __future__ import annotations

import threading

__all__ = ["NC_LOCK"]

#: held around every netCDF4 call sequence (open, read or write, close) of the process
NC_LOCK = threading.RLock()
