"""Errors shared across layers (the bottom layer: imports nothing of moderator)."""

from __future__ import annotations


class ScorerUnavailable(Exception):
    """The scorer cannot run here (weights or package missing). One-line message: what and how to fix."""
