import sys

from hilrl.cli import main

sys.exit(main())
