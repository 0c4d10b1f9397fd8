"""Registered in mmseg's registries on import."""
