"""`market-data-sidecar demo`: the sidecar with a simulated store and local orchestrators.

Everything runs in one process, needs nothing installed beyond the package (Redis and
PostgreSQL are used when present), and shows the same view as `market-data-sidecar status`:

- `store.py`: a stand-in for market-data-store: coordinator queues that fill and drain,
  its Prometheus `/metrics`, and its feedback POSTs with the store's hysteresis;
- `orchestrators.py`: what receives feedback: an HTTP webhook receiver and a consumer of
  the Redis Stream through Core's own `RedisStreamsBus`;
- `webhooks.py`: the webhook receiver itself, scriptable (the tests' and the bench's too);
- `runner.py`: wires them to a real sidecar app and draws the live view.
- `listening.py`: serves each app (store, receiver, sidecar) on its local port.
"""
