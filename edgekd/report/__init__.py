"""Reports: the run's JSON manifest and a Markdown report with one table across all stages."""
