"""The scenarios, one module each; each ``run(bench)`` measures and adds its figures to ``bench.results``.
``benchmarks/run.py`` runs them in order (``--only`` picks by the name in its ``SCENARIOS``)."""
