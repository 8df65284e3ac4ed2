"""dnnq service package."""
