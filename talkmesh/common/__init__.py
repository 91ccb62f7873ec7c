"""What every talkmesh service shares: config loading, gRPC server and channel helpers, telemetry."""
