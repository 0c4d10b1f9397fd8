"""Small helpers shared by the library's layers."""
