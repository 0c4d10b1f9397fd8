"""The package version (here so that ``core`` needs nothing above it)."""
__version__ = '0.1.0'
