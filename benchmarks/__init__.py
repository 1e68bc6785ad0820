"""stocksync benchmarks (issue 6): throughput and latency of the real service, as ratios against baselines
measured on the same machine in the same run. Entry point: ``scripts/bench`` (``python -m benchmarks``).

Modules:

- ``workload``: the retailer (stores, an online node, a warehouse, Zipf-popular skus), its stock and the event mix;
- ``publisher``: the load generator, a separate process publishing the mix over NATS and timing outcomes;
- ``naive``: the baseline applier, one transaction per event (``LedgerService.apply([event])``);
- ``httpload``: a small asyncio HTTP/1.1 load generator (closed loop, or a fixed rate);
- ``pgbench``: the TPC-B-like baseline on the same PostgreSQL;
- ``infra``: the embedded PostgreSQL and nats-server, scratch databases, the service processes, memory;
- ``reconcile``: the reconciliation timing on a bulk-seeded ledger;
- ``profile``: py-spy on the bench's processes, and the summary of what it recorded;
- ``plan``: the sizes of a quick or a full run, and ``Bench``, what every scenario runs with;
- ``results``: every figure of the run, and its checks;
- ``template``: the seeded template database every scenario clones;
- ``group``: a scenario's clone, clean NATS topology and applier (the worker or the naive one) with the relay;
- ``publishing``: the publisher run from the bench; ``ledger``: what the ledger recorded, how fast, settling;
- ``measure``: a throughput run and a latency run on a group, with their consistency checks;
- ``scenarios``: one module each: ``pgbench``, ``mixed`` (with the latency sweep), ``naive`` (both baselines),
  ``hot`` (with its latency run), ``http``, ``reconcile``, ``profiled`` (``--profile``);
- ``report``: the table, ``docs/benchmarks.md`` and the latency plot;
- ``run``: the scenarios in order, and the command line.
"""
