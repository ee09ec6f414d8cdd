"""The parts of the end-to-end benchmarks (``benchmarks/throughput.py`` and
``benchmarks/durability.py``), one job per module: the readings they produce, the bare
consumer, the worker run through :mod:`cellwatch.wiring` with timed parts, the model-only
baselines, the latency run, the memory run, and the machine and versions they report.

The broker they start is :class:`deploy.kafka.local_broker.KafkaBroker`.
"""
