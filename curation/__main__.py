"""`python -m curation ...`: the old name of `python -m vidcurate ...`, the project's command line. It lives
one layer up (vidcurate/cli.py), where every package's section and stage are assembled; a program may
import it."""
from __future__ import annotations

import sys

from vidcurate.cli import main

if __name__ == "__main__":
    sys.exit(main())
