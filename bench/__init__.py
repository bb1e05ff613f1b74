"""Benchmarks for the gateway: a fake Anthropic upstream, a load generator and a runner (see bench/README.md)."""
