"""``python -m session_ledger.cli``: the same as the ``session-ledger`` command."""

import sys

from session_ledger.cli import main

sys.exit(main())
