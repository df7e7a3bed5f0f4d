import sys

from hypercl.bench.cli import main

sys.exit(main())
