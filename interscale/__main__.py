from interscale.cli import main

raise SystemExit(main())
