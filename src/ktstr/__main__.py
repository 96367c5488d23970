from ktstr.cli import main

raise SystemExit(main())
