"""The run report: what evaluate measured, as metrics.json, report.md and PNG plots.

- `scores`: the figures derived from per-row results (recovered share of the teacher's gain,
  the judge's accuracy on pairs where the labels decide, chance, the worst rows);
- `speed`: serving speed and cost per 1,000 answers;
- `plots`: the PNGs (matplotlib);
- `report`: metrics.json and report.md built from the evaluation's files alone (`kdist report`),
  the terminal summary, and several runs side by side (`kdist compare`).

Nothing here asks a model or knows a stage: the evaluate stage writes the files, this reads them.
"""
