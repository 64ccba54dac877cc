"""Small shared helpers: atomic file writes, logging, CLI argument conventions."""
