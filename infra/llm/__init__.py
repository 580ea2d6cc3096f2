"""LLM backends: OpenAI-compatible endpoints, the embedded CPU model, vLLM, the heuristic judge."""
