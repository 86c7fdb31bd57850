import sys

from learner.node import main

sys.exit(main())
