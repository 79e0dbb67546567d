"""coca."""
