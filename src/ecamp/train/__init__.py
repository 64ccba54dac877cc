"""ecamp.train."""
