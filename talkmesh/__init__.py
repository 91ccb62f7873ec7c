"""talkmesh: streaming, lip-synced talking-head video from text, as a mesh of gRPC services."""

__version__ = "0.1.0"
