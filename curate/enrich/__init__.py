"""Enrich: work done only on the samples decide kept (synthetic captions)."""
