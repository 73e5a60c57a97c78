"""The feedback relay: intake -> router -> publishers, plus synthesized events."""
