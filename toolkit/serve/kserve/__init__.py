"""The Open Inference Protocol (KServe v2 REST): `protocol` (messages, JSON and Triton binary tensors),
`serving` (metadata, configuration, inference over the scheduler), `api_router` (the routes)."""
