"""talkmesh audio_features service."""
