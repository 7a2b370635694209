"""breakwater (under construction)."""
