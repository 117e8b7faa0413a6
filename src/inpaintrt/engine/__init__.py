"""The engine directory and its executors; imports no torch."""
