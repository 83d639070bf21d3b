"""``python -m editing``: see ``editing.cli``."""

import sys

from editing.cli import main

if __name__ == "__main__":
    sys.exit(main())
