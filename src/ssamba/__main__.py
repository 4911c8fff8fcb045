from ssamba.cli import main

raise SystemExit(main())
