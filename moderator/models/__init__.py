"""Model loading: open_clip models once per process (clip.py), test-tiny config (configs/)."""
