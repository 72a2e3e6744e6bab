"""The stages, one module each, on top of the libraries in ``pipeline/``: each reads its configuration section and
calls library functions top to bottom (``run(config)``). No library imports a stage."""
