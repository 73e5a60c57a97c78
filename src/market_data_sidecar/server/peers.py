"""The fair-share rule for what peers hold (connections, body bytes): at the cap, a
newcomer takes from the peer holding the most, so a peer can only crowd out itself."""

from __future__ import annotations

from collections.abc import Mapping


def crowded_out(held: Mapping[str, int], peer: str) -> set[str]:
    """The peers a newcomer from `peer` takes a connection or a body's bytes from, by what
    each holds: its own peer when that holds the most, else those holding the most. A peer
    can only ever crowd out itself, never the kubelet or the store."""
    top = max(held.values(), default=0)
    own = held.get(peer, 0)
    if own and own >= top:
        return {peer}
    return {name for name, amount in held.items() if amount == top}
