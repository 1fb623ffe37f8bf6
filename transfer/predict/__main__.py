from transfer.predict import main

raise SystemExit(main())
