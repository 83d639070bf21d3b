"""``python -m softrepa.evaluate`` (see ``softrepa.evaluate.cli``)."""

import sys

from softrepa.evaluate.cli import main

sys.exit(main())
