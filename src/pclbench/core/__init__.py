"""Shared core: configuration and its schema, registries, atomic I/O, provenance, job logs."""
