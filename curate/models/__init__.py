"""Model loading: locate model files offline first, then wrap them behind a small batch API."""
