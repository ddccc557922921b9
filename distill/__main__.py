from __future__ import annotations

import sys

from distill.cli import main

sys.exit(main())
