"""`python -m vidcurate ...` = `python -m curation ...` (vidcurate/cli.py)."""
from __future__ import annotations

import sys

from vidcurate.cli import main

if __name__ == "__main__":
    sys.exit(main())
