"""The browser edge: a page and an HTTP + WebSocket API that speak gRPC to the gateway."""
