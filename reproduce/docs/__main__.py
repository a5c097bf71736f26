"""``python -m reproduce.docs``."""

from reproduce.docs._builder import main

raise SystemExit(main())
