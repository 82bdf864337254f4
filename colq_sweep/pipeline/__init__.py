"""The flow of one sweep point, and its Hydra job.

    point.py  run_point: quantize (or reuse) -> evaluate (or reuse) -> baseline (found or computed once) -> track
    job.py    the Hydra job: validate (one line, exit 2), run the point, write the status file for the summary
"""
