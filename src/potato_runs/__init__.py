"""Potato Runs: check-in facts and the runs projected from them, over gRPC."""

__version__ = "0.1.0"
