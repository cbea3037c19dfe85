"""The OpenAI-compatible routes: `protocol` (request bodies checked), `serving` (completions and chat over the
generators), `serving_embeddings` (``/v1/embeddings`` over the embedding models), `tools` (tool calls),
`api_router` (the routes, ``/v1/models`` included)."""
