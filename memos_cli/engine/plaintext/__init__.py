"""Plaintext memory: sources and ingest, the derived index (vectors, BM25, hnswlib graph, shards), hybrid
ranking and search, event times, versions, merges, re-ingest sync, usage counts and the working tier."""
