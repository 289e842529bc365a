"""``python -m imanim_core.data.puppet`` (see :mod:`.tools`)."""
from .tools import main

raise SystemExit(main())
