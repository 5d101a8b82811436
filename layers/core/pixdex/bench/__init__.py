"""Benchmarks behind ``pixdex bench ...``; each writes its own section of docs/benchmarks.md."""
