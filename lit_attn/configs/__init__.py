"""Shipped YAML configs, installed as ``lit_attn.configs`` (read with importlib.resources).

No code: ``default.yaml`` is ``fit``'s embedded default, the others extend it
(``config: default.yaml``); ``--config NAME.yaml`` finds a file here by name
(lit_attn.config_files.resolve_config_path)."""
