"""Cohere-compatible reranking: `protocol` (the request body), `serving` (pairs scored over the scheduler),
`api_router` (``/v1/rerank``, ``/v2/rerank``, ``/rerank``)."""
