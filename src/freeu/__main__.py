from freeu.apps.cli import main

raise SystemExit(main())
