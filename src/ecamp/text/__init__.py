"""ecamp.text."""
