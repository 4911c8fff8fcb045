"""Data layer: manifests, corpus recipes, preparation and the torch Dataset. Imports ssamba.audio, never models."""
