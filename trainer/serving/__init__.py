"""Serving: SavedModel export, catalogue retrieval, the recommend command."""
