"""`python -m bench ARGS`: the load generator's command line (as `ringstore bench ARGS`)."""

import sys

from bench.load import main

sys.exit(main())
