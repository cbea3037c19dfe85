"""Triton's generate extension over the generators: `serving` (one request), `api_router` (the routes)."""
