"""Devices: what the engine runs on, which clocks can be locked, and (later) energy meters."""
