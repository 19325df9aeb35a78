"""Activation memory: KV-cache snapshots of memories (build, extend, file format, injection) and promote,
which makes, refreshes and drops them."""
