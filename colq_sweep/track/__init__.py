"""Tracking: MLflow at the edge.

    (the contract with the readers, run roles, tag names, result files and columns: colq_sweep/contract.py)
    store.py     the MLflow store (sqlite file under a cross-process lock, or a server) and its runs
    tags.py      identity, code and device tags of a point run
    multirun.py  the sweep's parent run, the end-of-sweep summary and exit code
"""
