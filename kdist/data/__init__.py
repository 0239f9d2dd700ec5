"""Data: task templates and answer parsing, and the synthetic task (the prepare stage is kdist.stages.prepare)."""
