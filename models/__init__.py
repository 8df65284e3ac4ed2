"""dnnq models package."""
