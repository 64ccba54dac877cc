"""ecamp.models."""
