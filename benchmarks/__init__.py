"""Benchmarks: figures, never assertions. Run with ``python -m benchmarks`` (see docs/benchmarks.md).

They use only real parts: embedded Postgres + Redis (or those named by DATABASE_URL / REDIS_URL),
the sandbox simulators, the real worker and the real receiver on loopback. Not collected by
pytest (``testpaths = ["tests"]``) and independent of ``tests/``.
"""
