"""ecamp.eval."""
