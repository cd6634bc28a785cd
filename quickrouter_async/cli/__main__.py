"""``python -m quickrouter_async.cli``."""

import sys

from . import main

sys.exit(main())
