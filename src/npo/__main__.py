"""`python -m npo` (and `torchrun -m npo`) runs the `npo` command."""

from npo.cli import main

raise SystemExit(main())
