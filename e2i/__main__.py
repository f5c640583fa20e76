from e2i.cli import main

raise SystemExit(main())
