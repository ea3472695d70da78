"""Config schemas and the rules each key and combination of keys must keep."""
