"""The driver node: hosts components on an instrument PC (no amqtt, xarray or netCDF4)."""
