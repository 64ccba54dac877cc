"""ecamp.distill."""
