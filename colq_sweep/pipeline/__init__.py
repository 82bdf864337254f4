"""The flow of one sweep point, and its Hydra job.

    plan.py   resolve(point) -> PointPlan: every key, pin, revision, path and derived setting, computed once
    point.py  run_point(plan): quantize (or reuse) -> evaluate (or reuse) -> baseline (found or computed once) -> track
    job.py    the Hydra job: validate (one line, exit 2), plan, run the point, write the status file for the summary
    helper.py a helper on an idle gpu-pool slot: rebuilds an offered evaluation and takes its unclaimed tasks
"""
