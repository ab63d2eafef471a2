from pclbench.cli import main

raise SystemExit(main())
