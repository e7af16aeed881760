"""`python -m vlmoe` = the `vlmoe` command."""

import sys

from vlmoe.cli.main import main

sys.exit(main())
