"""`python -m repro.get_data` (`make data`): the entry point; the code lives in repro.data.fetch."""

import sys

from repro.data.fetch import main

if __name__ == "__main__":
    sys.exit(main())
