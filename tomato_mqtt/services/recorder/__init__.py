"""The recorder: durable store of every data batch and the NetCDF file of each job."""
