"""Utility of generations: how well an image still shows what its prompt asks for (plug-in family "utility")."""
