"""talkmesh tts service."""
