"""Throughput and scaling benchmarks of simclr_tf: ``python -m benchmarks.run``.

See BENCHMARKS.md for the results and :mod:`benchmarks.run` for the switches.
"""
