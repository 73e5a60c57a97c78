"""The sidecar against the real consumers: market-data-pipeline, -orchestrator and -store."""
