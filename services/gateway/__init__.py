"""talkmesh gateway service."""
