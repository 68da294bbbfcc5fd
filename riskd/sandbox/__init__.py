"""Throwaway PostgreSQL clusters (``cluster``) and deterministic reference data (``seed``):
shipped because the demo needs them; the tests and the benchmarks use them too."""
