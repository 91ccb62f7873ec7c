"""talkmesh renderer service."""
