"""One reconciler per kind: read the world, call the pure decisions, return the status."""
