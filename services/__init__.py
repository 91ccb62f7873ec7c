"""The five talkmesh services, one package each."""
