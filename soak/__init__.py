"""The chaos soak: drive events through the stack while faults are injected, then verify."""
