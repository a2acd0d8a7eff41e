"""Benchmarks of the exporter: they print tables, and assert nothing about timings.

`python -m bench --help` lists the measurements and their options; docs/performance.md records
the results, the machine and the commands.
"""
