"""search_app."""
