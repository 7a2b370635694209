"""nanolog (under construction)."""
