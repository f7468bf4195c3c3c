"""The review server: browser UI, JSON API, users and the decision audit (see app.create_app)."""
