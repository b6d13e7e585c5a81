"""Frame sources: one ZeroMQ receiver with dialect plug-ins (wire v1, DECTRIS), replay, stacks, emulator."""
