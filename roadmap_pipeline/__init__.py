"""roadmap_pipeline: AI-generated roadmap content, landed in a database and kept consistent.

Layers (the import direction is the architecture):

- ``domain``: Pydantic models, status words and the partition-key codec; imports nothing of ours.
- ``store``: schema, idempotent writers, invariant queries and repair; knows no Dagster/LangGraph.
- ``generation``: content generators and the LangGraph workflow; knows domain and store.
- ``orchestration`` and ``definitions``: the Dagster code location; ``cli``: the operator CLI.
"""
