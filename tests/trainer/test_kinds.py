"""The registry of model kinds (trainer/kinds/): its contract, and that nothing outside the
kinds' own modules branches on a kind or on a model or featurizer class."""

import ast
import os

import numpy as np
import pytest

from tests.harness import REPO, required_overrides
from trainer import config as config_lib
from trainer import kind_registry, kinds
from trainer.errors import ConfigError
from trainer.kinds.base import ModelKind

# Classes whose type decides behaviour only inside trainer/kinds/.
KIND_CLASSES = {"BERTRecommender", "TwoTowerRecommender", "MatrixFactorization", "MostPopular",
                "GlassBoxRecommender", "TextPairPacker", "TwoTowerFeatures", "GlassBoxFeatures",
                "ModelKind"}
# Attributes of one kind's model that other code used to probe instead of asking the kind.
KIND_ATTRIBUTES = {"deduplicate_items"}
CHECKED_DIRS = ("trainer", "benchmarks", "explainability")


def _names(node) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def kind_branches(source: str) -> list:
    """``(line, what)`` for each place in ``source`` that decides on a kind by name or on a
    model/featurizer class: ``isinstance``/``type(...)`` on those classes, comparisons of
    ``model.kind`` or ``model.interaction``, method-identity tests, and probes of one
    kind's model attributes through ``getattr``/``hasattr``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("isinstance", "issubclass") and len(node.args) == 2 and \
                    _names(node.args[1]) & KIND_CLASSES:
                found.append((node.lineno, f"{node.func.id} on a kind's class"))
            if node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2 and \
                    isinstance(node.args[1], ast.Constant) and node.args[1].value in KIND_ATTRIBUTES:
                found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = any(isinstance(c, ast.Constant) and isinstance(c.value, str)
                        for side in sides for c in ast.walk(side))
            if any(isinstance(side, ast.Call) and getattr(side.func, "id", None) == "type"
                   for side in sides) and set().union(*map(_names, sides)) & KIND_CLASSES:
                found.append((node.lineno, "type(...) test of a kind's class"))
            for side in sides:
                if named and isinstance(side, ast.Attribute) and \
                        side.attr in ("kind", "interaction") \
                        and isinstance(side.value, (ast.Attribute, ast.Name)) and \
                        (getattr(side.value, "attr", None) == "model" or
                         getattr(side.value, "id", None) in ("m", "model")):
                    found.append((node.lineno, f"comparison of model.{side.attr}"))
                if isinstance(side, ast.Attribute) and side.attr in (
                        "catalogue_logits", "candidate_logits", "item_embeddings"):
                    found.append((node.lineno, f"identity test of {side.attr}"))
    return found


def _modules():
    for folder in CHECKED_DIRS:
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            if os.path.join(REPO, "trainer", "kinds") in root or "__pycache__" in root:
                continue
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(root, name)


def test_the_checker_finds_each_kind_of_branch():
    snippet = (
        "if isinstance(model, TwoTowerRecommender): pass\n"
        "if cfg.model.kind == 'sasrec': pass\n"
        "if m.interaction == 'cross': pass\n"
        "if type(kind).catalogue_logits is ModelKind.catalogue_logits: pass\n"
        "x = getattr(model, 'deduplicate_items', None)\n"
        "if isinstance(packer, (TwoTowerFeatures, GlassBoxFeatures)): pass\n")
    assert sorted({line for line, _ in kind_branches(snippet)}) == [1, 2, 3, 4, 5, 6]
    assert kind_branches("kind = kinds.for_config(cfg)\nif kind.retrieves: pass\n") == []


def test_nothing_outside_the_kinds_branches_on_a_kind():
    offenders = []
    for path in _modules():
        with open(path) as f:
            for line, what in kind_branches(f.read()):
                offenders.append(f"{os.path.relpath(path, REPO)}:{line}: {what}")
    assert offenders == [], "branch on a model kind outside trainer/kinds/ (ask the kind " \
                            "instead):\n" + "\n".join(offenders)


TINY = os.path.join(REPO, "configs", "tiny.yaml")


@pytest.mark.parametrize("name", kinds.names())
def test_every_registered_kind_keeps_the_contract(name):
    cls = kinds.kind_class(name)
    assert issubclass(cls, ModelKind) and cls.name == name
    assert cls.description and "\n" not in cls.description
    for flag in ("uses_text", "explains_words", "separate_towers", "scores_catalogue_from_item_vectors",
                 "retrieves", "counted", "exact_contributions"):
        assert isinstance(getattr(cls, flag), bool), flag
    assert not cls.retrieves or cls.separate_towers  # an item index needs an item tower
    assert not cls.separate_towers or cls.scores_catalogue_from_item_vectors
    if cls.benchmark_overrides is not None:
        assert all("=" in o for o in cls.benchmark_overrides)
    loss = "softmax" if cls.separate_towers else "bce"
    cfg = config_lib.load_config(TINY, [f"model.kind={name}", f"train.loss={loss}",
                                        *required_overrides(name)])
    assert isinstance(kinds.for_config(cfg), cls)


def test_a_kind_registered_outside_the_package_is_a_config_choice():
    @kinds.register("test_only_kind")
    class TestOnlyKind(ModelKind):
        description = "a kind defined by a test"

    try:
        assert "test_only_kind" in kinds.names()
        cfg = config_lib.load_config(TINY, ["model.kind=test_only_kind", "train.loss=bce"])
        assert isinstance(kinds.for_config(cfg), TestOnlyKind)
        with pytest.raises(ValueError, match="already registered"):
            kinds.register("test_only_kind")(type("Other", (ModelKind,), {}))
    finally:
        kind_registry._CLASSES.pop("test_only_kind")  # pylint: disable=protected-access


def test_unknown_kind_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match="model.kind.*popularity"):
        kinds.kind_class("gpt")


def _grouped_table(**change):
    """Two users' validation groups of three candidates each (items 1-3 of "abc")."""
    from trainer.data.input_pipeline import PairTable
    columns = dict(user_text=np.array(["u1"] * 3 + ["u2"] * 3, object),
                   item_text=np.array(list("abcabc"), object),
                   label=np.array([1, 0, 0, 0, 1, 0], np.float32),
                   group=np.array([0, 0, 0, 1, 1, 1]),
                   user_index=np.array([1, 1, 1, 2, 2, 2], np.int32),
                   item_index=np.array([1, 2, 3, 1, 2, 3], np.int32),
                   history_index=np.array([[2, 0]] * 3 + [[3, 1]] * 3, np.int32))
    columns.update(change)
    return PairTable(**columns)


def test_validation_scores_from_the_catalogue_only_where_the_logits_are_the_same(
        monkeypatch):
    texts = np.array(["", "a", "b", "c"], object)
    two_tower = kinds.kind_class("two_tower")()
    users, position, candidate = two_tower.catalogue_grouping(_grouped_table(), texts)
    assert list(users.user_index) == [1, 2]
    assert list(position) == [0, 0, 0, 1, 1, 1] and list(candidate) == [1, 2, 3, 1, 2, 3]
    # Pairs only (no item vectors to cache), or rows a catalogue scoring would misread:
    assert kinds.kind_class("cross_encoder")().catalogue_grouping(_grouped_table(),
                                                                  texts) is None
    for change in [dict(item_text=np.array(list("abcaXc"), object)),  # not the catalogue's text
                   dict(item_index=np.array([1, 2, 0, 1, 2, 3], np.int32)),  # unknown item
                   dict(history_index=np.array([[2, 0]] * 2 + [[3, 1]] * 4, np.int32)),
                   dict(query=np.array(["", "", "q", "", "", ""], object))]:
        assert two_tower.catalogue_grouping(_grouped_table(**change), texts) is None, change
    # A catalogue larger than the table: the pass over the rows is the cheaper one.
    assert two_tower.catalogue_grouping(_grouped_table(),
                                        np.array([""] + list("abcdefg"), object)) is None
    # Too many groups x items to hold (MIND's impressions against its news): row by row.
    from trainer.kinds import base
    monkeypatch.setattr(base, "CATALOGUE_GROUPING_MAX_SCORES", 2 * 4 - 1)
    assert two_tower.catalogue_grouping(_grouped_table(), texts) is None
