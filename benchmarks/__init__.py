"""edgekd's benchmarks: each module measures one claim and writes its result to benchmarks/results/.

Run them from the repository root as modules, e.g. `python -m benchmarks.sst2 --mode quick`; shared statistics are
in stats.py, the machine, versions and commit every result records in machine.py.
"""
