import sys

from .prune import main

sys.exit(main())
