"""Plain-language narratives of feature attributions, for people who are not
ML engineers (end users, loan officers).

Why: Bhatt et al. found explanations rarely reach end users; a sentence like
"Your income counted most (42%), towards approval." does. Sentences come
from per-locale template files (``policy/locales/<locale>.yaml``), use the
card's display names, and the honest shares of `DisclosureApplied` (of the
total over all features, so withheld features are accounted for in one
closing sentence). The direction is relative to the card's favourable
outcome (`positive_class`): a positive attribution to the explained class
pushes towards that class. An unknown locale falls back to English.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from desiderata.explainers.types import AttributionResult, Explanation
from desiderata.policy.disclosure import DisclosureApplied
from desiderata.server.model_card import ModelCard

__all__ = ["LocaleTemplates", "load_locale", "render_narrative"]

_LOCALES = Path(__file__).resolve().parent / "locales"
DEFAULT_LOCALE = "en"


class LocaleTemplates(BaseModel):
    """The templates of one locale (see ``locales/en.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first: str
    other: str
    towards: str
    against: str
    withheld: str
    none: str
    compared: str
    outcomes: dict[str, str] = Field(default_factory=dict)


def load_locale(locale: str) -> LocaleTemplates:
    """Templates of a locale ("en", "de-DE" tries "de-DE", "de", then "en").

    The tag comes from the caller, so it is only ever compared with the names of
    the shipped template files, never made into a path, and nothing is cached per tag.

    Args:
        locale: BCP-47-ish locale tag.
    """
    tag = locale.replace("_", "-")
    shipped = _shipped_locales()
    for name in (tag, tag.split("-")[0], DEFAULT_LOCALE):
        if name in shipped:
            return _templates(name)
    raise FileNotFoundError(f"no narrative templates for {locale[:40]!r} and no English fallback")


@functools.cache
def _shipped_locales() -> frozenset[str]:
    return frozenset(p.stem for p in _LOCALES.glob("*.yaml"))


@functools.cache
def _templates(name: str) -> LocaleTemplates:
    return LocaleTemplates.model_validate(yaml.safe_load((_LOCALES / f"{name}.yaml").read_text()))


def _percent(share: float) -> str:
    return f"{round(abs(share) * 100)}%"


def render_narrative(
    explanation: Explanation, applied: DisclosureApplied, card: ModelCard, locale: str = DEFAULT_LOCALE
) -> tuple[str, ...]:
    """Sentences for a disclosed feature attribution.

    Args:
        explanation: the explanation after `apply_disclosure`.
        applied: its disclosure record (honest shares).
        card: the model's card (display names, classes, positive class).
        locale: locale of the sentences; unknown ones fall back to English.

    Returns:
        One sentence per shown feature, largest first, plus one for withheld ones; first, for a
        contrastive explanation (``reference_class``), one saying what it compares with.
    """
    result = explanation.result
    if not isinstance(result, AttributionResult):
        raise TypeError("narratives are rendered for feature attributions only")
    t = load_locale(locale)
    positive = card.positive_class or card.class_names[-1]
    explained = card.class_names[result.target_class]
    outcome = t.outcomes.get(positive, positive)
    labels = card.labels
    sentences: list[str] = []
    reference = str(explanation.parameters.get("reference_class", ""))
    if reference:  # a contrastive background: say what the shares compare with
        sentences.append(t.compared.format(reference=t.outcomes.get(reference, reference)))
    shown = [(name, share) for name, share in applied.shares if share != 0]
    if not shown:
        return (*sentences, t.none)
    for i, (name, share) in enumerate(shown):
        towards = (share > 0) == (explained == positive)
        direction = (t.towards if towards else t.against).format(outcome=outcome)
        template = t.first if i == 0 else t.other
        sentences.append(template.format(feature=labels.get(name, name), share=_percent(share), direction=direction))
    if applied.withheld_share >= 0.005:
        sentences.append(t.withheld.format(share=_percent(applied.withheld_share)))
    return tuple(sentences)
