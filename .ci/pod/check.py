"""The checks and the load of .ci/pod.sh, one subcommand each; standard library only
(`split` needs PyYAML), so `load` also runs inside the store container. A check exits 0
when it holds, 1 (with the reason) when not; with --show it prints what it saw.

    check.py split WORKDIR                  rendered.yaml -> deployment.yaml, secret.json, names
    check.py queue SIDECAR_URL COORD        the queue component reads the store over 127.0.0.1
    check.py feedback SIDECAR_URL COORD     GET /feedback: the store's event, delivered
    check.py stream COORD < XRANGE output   a hard then an ok store event in Core's envelope
    check.py consumer OUTPUT COORD          the pipeline consumer's lines, summarised
    check.py composite SIDECAR_URL N LEVEL  GET /feedback: a fleet composite at LEVEL of N members
    check.py load SIDECAR_URL SECONDS       POST and GET /feedback loops, then the rates
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - loopback
        return json.load(response)


def split(work: str) -> None:
    """The Deployment with hostIP 127.0.0.1 on its ports (the only edit), and the
    chart's Secret as podman 4.3's secretKeyRef reads it: a JSON map of key to base64
    value (the Secret's `data`). podman's own handling of a Secret document stores it
    as YAML, which its secretKeyRef then rejects ("not valid JSON")."""
    import yaml

    with open(f"{work}/rendered.yaml") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    spec = deployment["spec"]["template"]["spec"]
    for container in spec["containers"]:
        for port in container.get("ports", []):
            port["hostIP"] = "127.0.0.1"
    with open(f"{work}/deployment.yaml", "w") as f:
        yaml.safe_dump(deployment, f, sort_keys=False)
    with open(f"{work}/secret.json", "w") as f:
        json.dump(secret["data"], f)
    with open(f"{work}/names", "w") as f:
        print(deployment["metadata"]["name"], secret["metadata"]["name"], file=f)
        print(*[v["name"] for v in spec["volumes"]], file=f)
    for container in spec["containers"]:
        for env in container.get("env", []):
            if env["name"].startswith("MDS_") or env["name"] == "SIDECAR_STORE_METRICS_URL":
                print(f"  {container['name']}: {env['name']}={env['value']}")


def queue(url: str, coordinator: str, show: bool) -> None:
    status = get_json(f"{url}/healthz")
    (component,) = [c for c in status["components"] if c["name"] == "queue"]
    d = component["details"]
    assert d["url"].startswith("http://127.0.0.1:"), d
    # The component lists its few worst coordinators in detail (the pod's store has two).
    assert f"{coordinator}:depth" in d, d
    assert d[f"{coordinator}:workers_alive"] != "0", d
    if show:
        print(
            f"/healthz {status['state']}; queue {component['state']}, reads {d['url']}:"
            f" {coordinator} depth {d[f'{coordinator}:depth']} of"
            f" {d[f'{coordinator}:capacity']}, {d[f'{coordinator}:workers_alive']} workers"
        )


def feedback(url: str, coordinator: str, show: bool) -> None:
    view = get_json(f"{url}/feedback")
    event = view["coordinators"][coordinator]
    assert event["origin"] == "store", event
    (target,) = view["targets"]
    assert target["delivered"] > 0, target
    assert target["last_error"] is None, target
    if show:
        print(
            f"GET /feedback: {coordinator} {event['level']} queue {event['queue_size']}/"
            f"{event['capacity']} origin {event['origin']}, reason {event.get('reason')};"
            f" levels {view['levels']}; target {target['name']} ({target['kind']})"
            f" delivered {target['delivered']}, dropped {target['dropped']},"
            f" circuit {target['circuit']}"
        )


def stream(coordinator: str, show: bool) -> None:
    # The store's own events, not ones the sidecar synthesized from polled depths:
    # the store reports the depth at the crossing (exactly the watermark for hard) and
    # `reason: queue_recovered` on ok, which the relay keeps as a header.
    levels = []
    last = None
    for line in sys.stdin:
        if not line.startswith("{"):
            continue
        envelope = json.loads(line)
        assert envelope["meta"]["schema_id"] == "telemetry.FeedbackEvent", envelope
        payload = envelope["payload"]
        if payload["coordinator_id"] != coordinator:
            continue
        assert payload["source"] == "store", envelope
        assert envelope["key"] == coordinator, envelope
        reason = envelope["meta"].get("headers", {}).get("reason")
        if payload["level"] == "ok" and reason == "queue_recovered":
            levels.append("ok")
        elif payload["level"] == "hard" and payload["queue_size"] == int(0.8 * payload["capacity"]):
            levels.append("hard")
        elif payload["level"] == "soft":
            levels.append("soft")
        else:
            levels.append(f"({payload['level']})")
        last = envelope
    assert "hard" in levels, levels
    assert "ok" in levels[levels.index("hard") :], levels
    if show:
        print(f"{len(levels)} entries of {coordinator}: {' '.join(levels)}")
        print("  (level): an event not at the store's crossing (synthesized by the sidecar)")
        print(f"last envelope: {json.dumps(last)}")


def consumer(path: str, coordinator: str) -> None:
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.startswith("{")]
    events = [e for e in lines if e["event"] == "event" and e["coordinator_id"] == coordinator]
    print(f"market-data-pipeline FeedbackConsumer handled {len(events)} events of {coordinator}:")
    for e in events:
        print(
            f"  {e['level']:<4} queue {e['queue_size']:>5} source {e['source']}"
            f" -> provider scale {e['scale']} ({e['pressure']}), read {e['lag_ms']} ms after"
        )


def composite(url: str, members: int, level: str, show: bool) -> None:
    (target,) = get_json(f"{url}/feedback")["targets"]
    assert target["scope"] == "fleet", target
    fleet = target["composite"]
    assert fleet is not None, target
    assert (fleet["members"], fleet["level"]) == (members, level), fleet
    if show:
        print(
            f"GET /feedback: fleet composite {fleet['level']} from {fleet['coordinator_id']} at "
            f"{fleet['member']} (members {fleet['members']}, coordinators "
            f"{fleet['coordinators']}); members: "
            + ", ".join(f"{m['instance']} {m['level']}" for m in target["members"])
        )


def load(url: str, seconds: float) -> None:
    """4 threads POSTing arrays of 10 events, 2 GETting /feedback, for `seconds`."""
    parts = urlsplit(url)
    deadline = time.monotonic() + seconds
    counts = {"post": 0, "get": 0, "errors": 0}
    lock = threading.Lock()

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)

    def loop(kind: str, worker: int) -> None:
        conn = connect()
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                if kind == "post":
                    body = json.dumps(
                        [
                            {
                                "coordinator_id": f"load-{worker}-{(n + i) % 50}",
                                "queue_size": (n * 37 + i) % 1000,
                                "capacity": 1000,
                                "level": ("ok", "soft", "hard")[(n + i) % 3],
                            }
                            for i in range(10)
                        ]
                    )
                    conn.request("POST", "/feedback", body, {"Content-Type": "application/json"})
                else:
                    conn.request("GET", "/feedback")
                response = conn.getresponse()
                response.read()
                ok = response.status < 400
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = connect()
            with lock:
                counts[kind if ok else "errors"] += 1

    threads = [threading.Thread(target=loop, args=("post", w)) for w in range(4)]
    threads += [threading.Thread(target=loop, args=("get", w)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(
        f"load: {counts['post'] / seconds:.0f} POST/s (10 events each),"
        f" {counts['get'] / seconds:.0f} GET/s, {counts['errors']} errors"
    )
    assert counts["errors"] == 0, "requests failed under load"
    assert counts["post"] > 0, counts
    assert counts["get"] > 0, counts


def main(argv: list[str]) -> int:
    show = "--show" in argv
    args = [a for a in argv if a != "--show"]
    command, rest = args[0], args[1:]
    try:
        if command == "split":
            split(rest[0])
        elif command == "queue":
            queue(rest[0], rest[1], show)
        elif command == "feedback":
            feedback(rest[0], rest[1], show)
        elif command == "stream":
            stream(rest[0], show)
        elif command == "consumer":
            consumer(rest[0], rest[1])
        elif command == "composite":
            composite(rest[0], int(rest[1]), rest[2], show)
        elif command == "load":
            load(rest[0], float(rest[1]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (AssertionError, KeyError, ValueError, OSError) as exc:
        print(f"{command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
