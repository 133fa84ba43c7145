"""The command-line tools `tomato`, `ketchup` and `passata`: pure MQTT clients."""
