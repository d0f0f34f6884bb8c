"""File input/output every other package may use: atomic writes, image files."""
