from longiseg.cli import main

raise SystemExit(main())
