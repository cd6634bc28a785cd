"""``python -m quickrouter_async.testing``: serve the emulator until interrupted."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
