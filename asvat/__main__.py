from asvat.cli import main

raise SystemExit(main())
