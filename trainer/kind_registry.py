"""The registry of model kinds: ``model.kind`` -> the :class:`~trainer.kinds.base.ModelKind`
that answers everything the rest of the code asks about a model family (the kinds
themselves are in trainer/kinds/, which hands these names on: ``trainer.kinds.register``).

A kind class registers itself with ``@register("name")``. The built-in kinds are listed in
``BUILT_IN`` (name -> module) and imported the first time they are asked for, so this
module stays free of TensorFlow and Keras: config validation reads :func:`names` before
the CLI has chosen a Keras backend. A kind defined outside this package registers when its
module is imported (import it before loading a config that names it)::

    from trainer.kinds import register
    from trainer.kinds.base import ModelKind

    @register("my_kind")
    class MyKind(ModelKind):
        ...

Adding a kind is its model file (``models/``), its kind module here, one ``BUILT_IN`` line
and a test; nothing else branches on the name.
"""

from __future__ import annotations

import importlib

from trainer.errors import ConfigError

# name -> module that defines (and registers) the kind's class.
BUILT_IN = {
    "popularity": "trainer.kinds.id_baselines",
    "mf": "trainer.kinds.id_baselines",
    "item_knn": "trainer.kinds.id_baselines",
    "sasrec": "trainer.kinds.two_tower",
    "two_tower": "trainer.kinds.two_tower",
    "frozen_two_tower": "trainer.kinds.frozen_two_tower",
    "cross_encoder": "trainer.kinds.cross_encoder",
    "glass_box": "trainer.kinds.glass_box",
    "gru4rec": "trainer.kinds.gru4rec",
}
# The names of model.kind before the registry (kind: bert with model.interaction).
LEGACY_BERT_INTERACTIONS = {"cross": "cross_encoder", "two_tower": "two_tower"}

_CLASSES: dict = {}


def register(name: str):
    """Class decorator: makes ``model.kind: name`` build with the decorated
    :class:`~trainer.kinds.base.ModelKind` subclass (its ``name`` is set to ``name``)."""
    def decorate(cls):
        existing = _CLASSES.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"model kind {name!r} is already registered by "
                             f"{existing.__module__}.{existing.__qualname__}")
        cls.name = name
        _CLASSES[name] = cls
        return cls
    return decorate


def names() -> tuple:
    """Every kind ``model.kind`` may name: the built-in ones and any registered since."""
    return tuple(dict.fromkeys([*BUILT_IN, *_CLASSES]))


def names_with(capability: str) -> list:
    """The registered kinds whose class sets ``capability`` (a ``ModelKind`` flag such as
    ``retrieves`` or ``uses_text``): what an error names as the kinds that would do."""
    return [name for name in names() if getattr(kind_class(name), capability)]


def kind_class(name: str) -> type:
    """The registered class of kind ``name`` (its module imported on first use)."""
    if name not in _CLASSES and name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])
    if name not in _CLASSES:
        raise ConfigError(f"config key 'model.kind': unknown kind {name!r}; registered "
                          f"kinds: {', '.join(names())}")
    return _CLASSES[name]


def for_config(cfg):
    """The :class:`~trainer.kinds.base.ModelKind` of ``cfg.model.kind``, after its own
    config checks (:meth:`~trainer.kinds.base.ModelKind.check_config`)."""
    kind = kind_class(cfg.model.kind)()
    kind.check_config(cfg)
    return kind
