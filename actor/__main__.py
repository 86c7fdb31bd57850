import sys

from actor.node import main

sys.exit(main())
