"""`python -m vidcurate run|demo|inspect ...`: the project's command line (vidcurate/cli.py);
`python -m curation ...` is the same program under its old name."""
from __future__ import annotations

import sys

from vidcurate.cli import main

if __name__ == "__main__":
    sys.exit(main())
