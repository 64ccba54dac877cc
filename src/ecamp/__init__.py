"""ecamp: Entity-centered Context-aware Medical Vision-Language Pre-training for chest X-rays."""

__version__ = "0.1.0"
