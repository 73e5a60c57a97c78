"""Health probes and a backpressure feedback relay beside every market-data-store pod."""

__version__ = "0.1.0"
