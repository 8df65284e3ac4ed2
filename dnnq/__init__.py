"""dnnq dnnq package."""
