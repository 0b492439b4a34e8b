import sys

from avsslib.cli import main

sys.exit(main())
