"""The engine: compiled policies and everything that turns bytes or stored embeddings into verdicts.

Above policy/ (files), scorers, models, decode and store; below sources, pipeline, queue, API and CLI.
"""
