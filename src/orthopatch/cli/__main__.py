import sys

from orthopatch.cli import main

sys.exit(main())
