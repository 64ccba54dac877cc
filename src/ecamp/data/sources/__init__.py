"""ecamp.data.sources."""
