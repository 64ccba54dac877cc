"""ecamp.viz."""
