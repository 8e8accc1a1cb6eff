import sys

from lmiflow.cli import main

sys.exit(main())
