import sys

from geokd.cli import main

sys.exit(main())
