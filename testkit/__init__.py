"""What tests and benchmarks share: the IU gold standard and its scoring, the OpenAI-protocol stub server."""
