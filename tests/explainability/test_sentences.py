"""Natural-language explanations (explainability/sentences.py): causal wording only for a
verified counterfactual, every number from the inputs, matched words from the attributions."""

import re

import pytest

from bert_recommender.explainability.sentences import explain_sentence, matched_words

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")

HISTORY_TITLES = ["Acme Wireless Laptop", "Globex Vintage Camera", "Initech Phone",
                  "Retro Leather Edition 2"]  # newest first
HISTORY_ATTRIBUTIONS = [0.05, 0.3149, -0.2, 0.1211]


def word(text, segment):
    return {"text": text, "segment": segment, "part": 0}


WORDS = [word("looking", "user"), word("for", "user"), word("laptop", "user"),
         word("acme", "user"), word("wireless", "user"), word("new", "user"),
         word("initech", "item"), word("wireless", "item"), word("laptop", "item"),
         word("pro", "item"), word("acme", "item"), word("new", "item"), word("laptop", "item")]
WORD_ATTRIBUTIONS = [0.9, 0.1, 0.8, 0.7, 0.2,  # user side: never reported
                     0.0,
                     0.6,   # initech: not on the user side
                     0.3,   # wireless
                     0.5,   # laptop
                     0.95,  # pro: not on the user side
                     -0.2,  # acme: negative
                     0.0,   # new: zero
                     0.1]   # laptop again (weaker duplicate)


def verified(removed, score_after=0.3127, rank_after=3, impression_size=4):
    return {"found": True, "verified": True, "removed_titles": list(removed),
            "removed": [f"id_{i}" for i in range(len(removed))], "score_after": score_after,
            "rank_after": rank_after, "impression_size": impression_size}


def sentence(counterfactual=None, score=0.7349, rank=1, impression_size=4,
             history_attributions=HISTORY_ATTRIBUTIONS, words=WORDS,
             word_attributions=WORD_ATTRIBUTIONS, method="shapley"):
    return explain_sentence("Initech Wireless Laptop Pro", score, rank, impression_size,
                            counterfactual, HISTORY_TITLES, history_attributions, words,
                            word_attributions, method=method)


def numbers_in(text):
    """The numbers of a sentence, outside quoted titles/words."""
    return [float(n) for n in NUMBER.findall(re.sub(r"'[^']*'", "''", text))]


def assert_numbers_from(text, allowed):
    found = numbers_in(text)
    assert found, text
    for number in found:
        assert any(abs(number - a) < 1e-9 for a in allowed), (number, text)


# -- matched_words -----------------------------------------------------------------------------


def test_matched_words_item_side_positive_on_user_side_strongest_first():
    # laptop (0.5, duplicate 0.1 collapsed) > wireless (0.3); initech and pro are not on the
    # user side, acme is negative, new is zero; user-side attributions are ignored.
    assert matched_words(WORDS, WORD_ATTRIBUTIONS) == ["laptop", "wireless"]


def test_matched_words_limit_and_order():
    words = [word(t, "user") for t in "a b c d".split()] + \
        [word(t, "item") for t in "a b c d".split()]
    attributions = [0.0] * 4 + [0.1, 0.4, 0.3, 0.2]
    assert matched_words(words, attributions) == ["b", "c", "d"]
    assert matched_words(words, attributions, limit=1) == ["b"]
    assert matched_words(words, attributions, limit=10) == ["b", "c", "d", "a"]
    assert matched_words(words, [0.0] * 8) == []
    assert matched_words([word("x", "item")], [1.0]) == []  # nothing on the user side


def test_matched_words_deduplicates_keeping_the_strongest():
    words = [word("laptop", "user"), word("pro", "user"), word("laptop", "item"),
             word("pro", "item"), word("laptop", "item")]
    # "laptop" ranks by its strongest occurrence (0.9) ahead of "pro" (0.5).
    assert matched_words(words, [0.0, 0.0, 0.1, 0.5, 0.9]) == ["laptop", "pro"]


# -- causal wording ----------------------------------------------------------------------------


def test_verified_counterfactual_single_click():
    text = sentence(verified(["Acme Wireless Laptop"]))
    assert text == ("Recommended 'Initech Wireless Laptop Pro' (score 0.735, rank 1 of 4). "
                    "It was recommended because of your click on 'Acme Wireless Laptop': "
                    "without it the score is 0.313 and it falls to rank 3 of 4 "
                    "(verified by re-scoring). Words that matched: 'laptop', 'wireless'.")
    assert "associated with" not in text
    assert_numbers_from(text, [0.735, 1, 4, 0.313, 3])


def test_near_tie_counterfactual_shows_the_measured_drop():
    """A flip among near-tied candidates must not read "0.232 ... the score is 0.232"."""
    cf = verified(["Acme Wireless Laptop"], score_after=0.23196, rank_after=11,
                  impression_size=12)
    text = explain_sentence("Initech Wireless Laptop Pro", 0.23204, 1, 12, cf, [], None,
                            [], None)
    assert "without it the score falls from 0.2320 to 0.2320" not in text
    assert "without it the score falls from 0.23204 to 0.23196 and it falls to rank 11" in text
    assert_numbers_from(text, [0.232, 1, 12, 0.23204, 0.23196, 11])


def test_verified_counterfactual_several_clicks():
    text = sentence(verified(["Acme Wireless Laptop", "Initech Phone"]))
    assert "because of your clicks on 'Acme Wireless Laptop' and 'Initech Phone': " \
           "without them the score is 0.313" in text
    text = sentence(verified(HISTORY_TITLES[:3]))
    assert "clicks on 'Acme Wireless Laptop', 'Globex Vintage Camera' and " \
           "'Initech Phone': without them" in text


def test_verified_counterfactual_threshold_mode_has_no_rank():
    cf = verified(["Initech Phone"], score_after=0.4449, rank_after=1, impression_size=1)
    text = sentence(cf, rank=1, impression_size=1)
    assert "because" in text
    assert "without it the score is 0.445 (verified by re-scoring)." in text
    assert "falls to rank" not in text
    assert_numbers_from(text, [0.735, 0.445, 1])


@pytest.mark.parametrize("counterfactual", [
    None,
    {"found": False, "verified": False},
    {"found": True, "verified": False, "removed_titles": ["Initech Phone"],
     "score_after": 0.1, "rank_after": 2, "impression_size": 4},
    {"found": False, "verified": True},
])
def test_no_causal_wording_without_a_verified_counterfactual(counterfactual):
    text = sentence(counterfactual)
    assert "because" not in text and "without" not in text and "verified" not in text
    # The two strongest positive contributions, strongest first, with measured values.
    assert ("Its score is associated with your clicks on 'Globex Vintage Camera' (+0.31) "
            "and 'Retro Leather Edition 2' (+0.12) (shapley contributions to the score).") \
        in text
    assert "Initech Phone" not in text  # negative contribution: never cited
    assert_numbers_from(text, [0.735, 1, 4, 0.31, 0.12])


def test_not_found_is_stated_only_when_searched():
    text = sentence({"found": False, "verified": False})
    assert "No small set of past clicks whose removal changes this recommendation" in text
    assert "No small set" not in sentence(None)


def test_no_positive_history_contribution():
    text = sentence({"found": False}, history_attributions=[-0.1, 0.0, -0.3, -0.05])
    assert "associated with" not in text and "because" not in text
    assert "No small set" in text
    assert "associated with" not in sentence(None, history_attributions=None)
    assert "associated with" not in sentence(None, history_attributions=[])


def test_method_name_and_missing_rank():
    text = sentence(None, rank=None, impression_size=None, method="leave-one-out")
    assert text.startswith("Recommended 'Initech Wireless Laptop Pro' (score 0.735).")
    assert "(leave-one-out contributions to the score)" in text


def test_words_section():
    assert "Words that matched: 'laptop', 'wireless'." in sentence(None)
    assert "Words that matched" not in sentence(None, word_attributions=None)
    assert "Words that matched" not in sentence(None, word_attributions=[0.0] * len(WORDS))
    assert "Words that matched" not in sentence(None, words=[], word_attributions=[])


@pytest.mark.parametrize("score, rank, size, attributions, cf", [
    (0.987, 2, 7, [0.456, 0.0049, 0.3, -0.5], None),
    (0.1234, 5, 5, [0.01, 0.02, 0.03, 0.04], {"found": False}),
    (0.5, 1, 3, [0.2, 0.1, 0.0, 0.0], verified(["Initech Phone"], 0.2468, 2, 3)),
    (0.066, 3, 9, [0.9, -0.9, 0.45, 0.45], verified(["A", "B"], 0.011, 9, 9)),
])
def test_every_number_comes_from_the_inputs(score, rank, size, attributions, cf):
    text = sentence(cf, score=score, rank=rank, impression_size=size,
                    history_attributions=attributions)
    # Scores carry 3 decimals, contributions 2 significant digits (small ones stay visible).
    allowed = [round(score, 3), rank, size] + [abs(float(f"{a:.2g}")) for a in attributions]
    if cf and cf.get("found"):
        allowed += [round(cf["score_after"], 3), cf["rank_after"], cf["impression_size"]]
    assert_numbers_from(text, allowed)
    assert f"score {score:.3f}" in text
    # Signs of attributions are shown and match the (positive) cited values.
    for sign_number in re.findall(r"\(([-+]\d+\.\d+)\)", text):
        assert float(sign_number) > 0 or float(sign_number) == 0.0


def test_titles_are_quoted():
    text = sentence(verified(["Retro Leather Edition 2"]))
    assert "'Initech Wireless Laptop Pro'" in text and "'Retro Leather Edition 2'" in text
    text = sentence(None)
    for title in ("Globex Vintage Camera", "Retro Leather Edition 2"):
        assert f"'{title}'" in text
