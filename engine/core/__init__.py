"""Jobs, errors, the process and the device: what everything else stands on."""
