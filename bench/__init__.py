"""Benchmarks: scripts that measure retrieval quality and speed (`python -m bench.<name>`)."""
