"""``python -m grounded_seg.cli``: the same as the ``grounded-seg`` command."""

import sys

from . import main

sys.exit(main())
