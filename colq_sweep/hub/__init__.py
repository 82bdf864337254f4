"""What a sweep needs from the Hugging Face Hub, and whether this machine has it.

    inputs.py    the checkpoints, calibration sets and ViDoRe datasets a sweep reads; cached? reachable? fetched
    cache.py     the `datasets` prepared-cache view (where offline loading looks) and a writer for it
    prefetch.py  `python -m colq_sweep.prefetch [--check] <overrides>`: fetch or check a sweep's inputs
"""
