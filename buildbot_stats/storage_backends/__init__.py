"""Storage backends: where points end up."""
