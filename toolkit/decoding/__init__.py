"""The decoding engine of multi-step models: KV cache, the step loop and its `Stepper` protocol, sampling, beam
search, grammar masks and the streaming detokenizer. It knows no task: the pipelines that drive it live with
their tasks (`toolkit.tasks.generate`, `toolkit.tasks.transcribe`, `toolkit.tasks.text2text`)."""
