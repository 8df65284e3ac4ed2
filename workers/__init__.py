"""dnnq workers package."""
