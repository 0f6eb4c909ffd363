import sys

from sonic.cli import main

sys.exit(main())
