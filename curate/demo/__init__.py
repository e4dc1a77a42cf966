"""Generated demo corpus with planted defects, and a loopback HTTP server to serve it."""
