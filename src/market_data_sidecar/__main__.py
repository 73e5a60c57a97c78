"""Allow `python -m market_data_sidecar`."""

from market_data_sidecar.cli import main

raise SystemExit(main())
