"""Shipped YAML configs, installed as ``lit_attn.configs`` (read with importlib.resources)."""
