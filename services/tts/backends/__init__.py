"""TTS backends: the eSpeak NG engine and Piper voices (ONNX), behind one interface."""
