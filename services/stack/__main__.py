import sys

from services.stack.launcher import main

sys.exit(main())
