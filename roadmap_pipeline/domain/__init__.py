"""Domain models, status words and partition keys. Imports nothing else of roadmap_pipeline."""
