"""Data: sources, task templates, synthetic tasks and the prepare stage."""
