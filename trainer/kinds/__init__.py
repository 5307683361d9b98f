"""The model kinds, one module each (``ModelKind`` in base.py); their registry is
trainer/kind_registry.py, whose names this package hands on."""

from trainer.kind_registry import (BUILT_IN, LEGACY_BERT_INTERACTIONS, for_config,  # noqa: F401
                                   kind_class, names, names_with, register)
