"""The intake belongs to the pod, tested from a real peer outside it.

Each test makes a network namespace joined to this one by a veth pair with link-local
addresses (a /30 of 169.254.0.0/16 that no interface here uses), runs `market-data-sidecar
run` on 0.0.0.0, and sends requests from inside the namespace: its packets arrive from
169.254.x.y, as a pod elsewhere in the cluster would. Everything is removed at the end.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.reliability.conftest import metric_value, scrape
from tests.support.helpers import SidecarProcess, eventually, store_payload

TOKEN = "peer-token-0123456789"

#: Runs inside the namespace: one request, its status and body printed as JSON.
_REQUEST = """
import json, sys, urllib.error, urllib.request
method, url, body, token = sys.argv[1:5]
request = urllib.request.Request(url, data=body.encode() or None, method=method)
if body:
    request.add_header("Content-Type", "application/json")
if token:
    request.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        status, text = response.status, response.read().decode()
except urllib.error.HTTPError as error:
    status, text = error.code, error.read().decode()
print(json.dumps({"status": status, "body": text}))
"""


@dataclass(frozen=True)
class Peer:
    """A network namespace whose address reaches this one's `host_address` over a veth."""

    namespace: str
    host_address: str
    address: str

    def request(
        self, method: str, url: str, body: Any = None, *, token: str = ""
    ) -> tuple[int, str]:
        data = "" if body is None else json.dumps(body)
        command = ["ip", "netns", "exec", self.namespace, sys.executable, "-c", _REQUEST]
        result = subprocess.run(
            [*command, method, url, data, token],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        return answer["status"], answer["body"]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def _free_link_local_subnet() -> tuple[str, str]:
    """Two addresses of a /30 in 169.254.100-250.x that no interface here has."""
    used = _ip("-o", "-4", "addr", "show").stdout
    for _ in range(100):
        base = f"169.254.{random.randint(100, 250)}"
        last = random.randrange(4, 252, 4)
        pair = (f"{base}.{last + 1}", f"{base}.{last + 2}")
        if not any(f"{base}.{last + n}/" in used for n in range(4)):
            return pair
    raise AssertionError("no free link-local /30 found")


@pytest.fixture
def peer() -> Iterator[Peer]:
    if shutil.which("ip") is None:
        pytest.fail("this test needs iproute2's `ip`: apt-get install iproute2")
    suffix = secrets.token_hex(3)
    namespace, host_link, peer_link = f"mds-peer-{suffix}", f"mdsh{suffix}", f"mdsp{suffix}"
    created = _ip("netns", "add", namespace)
    if created.returncode != 0:
        pytest.fail(
            "this test needs to create a network namespace (run as root): " + created.stderr.strip()
        )
    try:
        host_address, peer_address = _free_link_local_subnet()
        steps = [
            ("link", "add", host_link, "type", "veth", "peer", "name", peer_link),
            ("link", "set", peer_link, "netns", namespace),
            ("addr", "add", f"{host_address}/30", "dev", host_link),
            ("link", "set", host_link, "up"),
            ("-n", namespace, "addr", "add", f"{peer_address}/30", "dev", peer_link),
            ("-n", namespace, "link", "set", peer_link, "up"),
            ("-n", namespace, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield Peer(namespace, host_address, peer_address)
    finally:
        _ip("netns", "del", namespace)  # takes the peer end, and so the pair, with it
        _ip("link", "del", host_link)  # in case the pair outlived the namespace


async def _started(start: Callable[..., SidecarProcess], **env: str) -> SidecarProcess:
    sidecar = start({"SIDECAR_HOST": "0.0.0.0", **env})
    await sidecar.wait_listening()
    return sidecar


async def _post_locally(sidecar: SidecarProcess, *, token: str = "") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sidecar.url}/feedback", json=store_payload(), headers=headers) as response,
    ):
        return response.status


async def test_without_a_token_a_peer_outside_the_pod_is_refused_but_sees_probes(
    peer: Peer, sidecar_process: Callable[..., SidecarProcess]
) -> None:
    sidecar = await _started(sidecar_process)
    remote = f"http://{peer.host_address}:{sidecar.port}"

    refused = [peer.request("POST", f"{remote}/feedback", store_payload()) for _ in range(3)]
    probes = {path: peer.request("GET", remote + path) for path in ("/livez", "/metrics", "/")}
    local = await _post_locally(sidecar)

    for status, body in refused:
        assert status == 403, body
        assert "loopback" in json.loads(body)["error"]
    for path, (status, body) in probes.items():
        assert status == 200, (path, body)
    assert probes["/livez"][1] == "ok\n"
    assert local == 202  # 127.0.0.1 needs no token
    exposition = await scrape(sidecar)
    received = "sidecar_feedback_received_total"
    assert metric_value(exposition, received, outcome="forbidden") == 3
    assert metric_value(exposition, received, outcome="accepted") == 1
    # The refusal names the peer the packets came from, once for the three.
    await eventually(lambda: peer.address in sidecar.output(), message="refusal logged")
    assert sidecar.output().count("403 forbidden") == 1


async def test_with_a_token_a_peer_outside_the_pod_that_presents_it_is_accepted(
    peer: Peer, sidecar_process: Callable[..., SidecarProcess]
) -> None:
    sidecar = await _started(sidecar_process, SIDECAR_TOKEN=TOKEN)
    url = f"http://{peer.host_address}:{sidecar.port}/feedback"

    accepted = peer.request("POST", url, store_payload(), token=TOKEN)
    wrong = peer.request("POST", url, store_payload(), token=TOKEN[:-1])
    missing = peer.request("POST", url, store_payload())
    livez = peer.request("GET", f"http://{peer.host_address}:{sidecar.port}/livez")

    assert accepted == (202, '{"accepted": 1}')
    assert wrong[0] == 401
    assert missing[0] == 401
    assert livez[0] == 200
    # With a token, loopback is no exception: the token is the rule.
    assert await _post_locally(sidecar) == 401
    assert await _post_locally(sidecar, token=TOKEN) == 202
