"""The ProjectCache: in-process tier, optional Redis tier, warm start, metrics and admin routes."""
