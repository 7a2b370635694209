"""microrpc (under construction)."""
