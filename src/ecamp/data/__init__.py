"""ecamp.data."""
