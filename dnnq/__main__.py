"""`python -m dnnq` = the `dnnq` console script."""

import sys

from dnnq.cli import main

sys.exit(main())
