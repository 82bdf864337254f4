"""Launch support: what can be checked before jobs start, and the schedulers jobs run under.

    preflight.py  checks of the world before any job starts (CUDA visible, enough calibration text)
    slurm.py      the Slurm job of this process (run tags) and the scheduler's state of other jobs
    probe.py      a diagnostic task function for launchers (which devices each job got), no model loaded
"""
