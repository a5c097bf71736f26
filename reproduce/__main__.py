"""``python -m reproduce``."""

from reproduce._runner import main

raise SystemExit(main())
