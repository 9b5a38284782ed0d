"""Content generation: generators (OpenAI-compatible, offline) and the per-concept LangGraph
workflow. Knows the domain and the store; knows no Dagster."""
