"""analysis: metrics and experiments on attribution maps."""
