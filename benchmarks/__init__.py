"""Benchmarks: figures that targets are measured by (speed, validity), kept out of the tests.

``demo_time.py`` prints its figures; the ones listed in ``EXERCISES``
also write a result with its conditions through the lab runner (``lab run benchmarks.<name>``),
committed under ``results/benchmarks/`` and shown in the generated tables. They run on demand,
not as part of ``lab run all``.
"""

TITLE = "Benchmarks (run on demand)"
EXERCISES: tuple[str, ...] = ("benchmarks.tool_calls", "benchmarks.setup_time", "benchmarks.llm_throughput")
