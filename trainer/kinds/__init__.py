"""The model kinds, one module each (``ModelKind`` in base.py); their registry is
trainer/kind_registry.py, whose names this package hands on."""

from trainer.kind_registry import (for_config, kind_class, names, names_with,  # noqa: F401
                                   register)
