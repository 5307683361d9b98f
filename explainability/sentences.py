"""Natural-language explanations that state only computed quantities.

Causal wording ("because", "without them") is used only for a counterfactual that was
verified by re-scoring; attributions alone are reported as "associated with", with their
measured values. Every number in a sentence comes from the record it describes.
"""

from __future__ import annotations


def _quote_list(titles: list) -> str:
    quoted = [f"'{t}'" for t in titles]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def matched_words(words: list, attributions: list, limit: int = 3) -> list:
    """Candidate words with positive attribution that also occur on the user side, the
    strongest first."""
    user_words = {w["text"] for w in words if w["segment"] == "user"}
    ranked = sorted(((a, w["text"]) for w, a in zip(words, attributions)
                     if w["segment"] == "item" and a > 0 and w["text"] in user_words),
                    reverse=True)
    seen = []
    for _, text in ranked:
        if text not in seen:
            seen.append(text)
    return seen[:limit]


def explain_sentence(title: str, score: float, rank: int | None, impression_size: int | None,
                     counterfactual: dict | None, history_titles: list,
                     history_attributions: list | None, words: list,
                     word_attributions: list | None, method: str = "shapley") -> str:
    """One paragraph for one recommendation (see the module docstring for the rules).

    ``history_titles`` and ``history_attributions`` are aligned (newest first);
    ``word_attributions`` are aligned with ``words`` (dicts with ``text`` and ``segment``).
    """
    ranked = f", rank {rank} of {impression_size}" if rank and impression_size else ""
    parts = [f"Recommended '{title}' (score {score:.3f}{ranked})."]
    if counterfactual and counterfactual.get("found") and counterfactual.get("verified"):
        removed = counterfactual["removed_titles"]
        clicks = "click" if len(removed) == 1 else "clicks"
        before_score, after_score = score, counterfactual["score_after"]
        digits = 3
        # Near-ties: a flip by less than 0.0005 would read "0.232 ... 0.232"; show enough
        # digits that the measured drop is visible, and both scores side by side.
        while digits < 6 and round(before_score, digits) == round(after_score, digits):
            digits += 1
        after = (f"the score is {after_score:.3f}" if digits == 3 else
                 f"the score falls from {before_score:.{digits}f} to {after_score:.{digits}f}")
        if counterfactual.get("rank_after") and counterfactual.get("impression_size", 0) > 1:
            after += (f" and it falls to rank {counterfactual['rank_after']} of "
                      f"{counterfactual['impression_size']}")
        parts.append(f"It was recommended because of your {clicks} on {_quote_list(removed)}: "
                     f"without {'it' if len(removed) == 1 else 'them'} {after} "
                     "(verified by re-scoring).")
    elif history_attributions is not None and len(history_attributions):
        top = sorted(((a, t) for a, t in zip(history_attributions, history_titles) if a > 0),
                     reverse=True)[:2]
        if top:
            cited = " and ".join(f"'{t}' ({a:+.2g})" for a, t in top)
            parts.append(f"Its score is associated with your clicks on {cited} "
                         f"({method} contributions to the score).")
        if counterfactual is not None and not counterfactual.get("found"):
            parts.append("No small set of past clicks whose removal changes this "
                         "recommendation was found.")
    if word_attributions is not None and len(words):
        matched = matched_words(words, word_attributions)
        if matched:
            parts.append("Words that matched: " + ", ".join(f"'{w}'" for w in matched) + ".")
    return " ".join(parts)
