"""`python -m lookalike_search`: runs the search service (configuration from LOOKALIKE_SEARCH_* env vars)."""
from .server import main

raise SystemExit(main())
