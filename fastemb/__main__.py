import sys

from fastemb.cli import main

sys.exit(main())
