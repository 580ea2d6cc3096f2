"""UltraFeedback-style preference dataset builder: shared types, spec and CLI."""

__version__ = "0.1.0"
