"""talkmesh encoder service."""
