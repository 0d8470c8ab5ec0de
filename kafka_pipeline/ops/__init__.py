"""Operating the pipeline: the status view."""
