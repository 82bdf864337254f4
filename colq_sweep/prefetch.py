"""`python -m colq_sweep.prefetch [--check] <the sweep's overrides>`: the documented spelling of
colq_sweep/hub/prefetch.py (fetch or check the Hub inputs of a sweep)."""

import sys

from colq_sweep.hub.prefetch import main

if __name__ == "__main__":
    sys.exit(main())
