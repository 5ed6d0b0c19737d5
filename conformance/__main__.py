"""``python -m conformance run --connector NAME ...``: the kit's CLI without the gateway."""

import sys

from conformance.cli import main

if __name__ == "__main__":
    sys.exit(main())
