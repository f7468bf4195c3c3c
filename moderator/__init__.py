"""moderator: plugin-based image content moderation and auto-tagging on CLIP."""

__version__ = "0.1.0"
