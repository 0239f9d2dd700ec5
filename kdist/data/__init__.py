"""Data sources: reading the rows users bring (files, Hugging Face datasets, synthetic-data
exports) and the procedural demo task; selecting, deduplicating and splitting them. What a row
means is its task's business (kdist.tasks); the prepare stage (kdist.stages.prepare) puts the
two together."""
