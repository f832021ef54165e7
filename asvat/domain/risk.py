"""The risk of one incident: standard, medium or high, with the reasons why.

The scoring model is the policy's ``risk`` section (see ``asvat/policy/default.yaml``):

* score = the sum of the weights of the factors present — each rule met (``rule_met`` plus
  ``per_incident_over_threshold`` per incident counted beyond the rule's threshold), the
  place being a repeat location, the ASB category, the associated crime type, a hate motive
  (recorded as the vulnerability factor ``hate_motivated`` or by a code of crime type
  ``hate``; weighed once) and each other vulnerability factor;
* level = the highest level whose cut-off the score reaches, then raised to the
  vulnerability floor's level when a vulnerability factor is recorded and the floor's
  condition holds.

A vulnerability factor can only raise a level, by construction: vulnerability weights are
at least 0 (the policy refuses a negative one), so one more factor never lowers the score;
the levels' cut-offs increase, so a higher score never gives a lower level; and the floor
is a maximum, never a cap. Nothing else depends on the vulnerability factors.

Reasons come in a fixed order — rules (in policy order), repeat location, ASB category,
crime type, hate motive, vulnerability factors (in :data:`VULNERABILITY_FACTORS` order),
the floor — so the same inputs always give the same explanation. A factor present in the
incident gets a reason even when its weight is 0 (a person sees it was considered); a
crime type that the policy does not weigh gets none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asvat.domain.assessment import Assessment
from asvat.domain.incident import VULNERABILITY_FACTORS
from asvat.domain.policy import LEVELS, CodeClass, Policy
from asvat.domain.timeutil import MICROS_PER_SECOND

#: Factor names, as they appear in :attr:`Reason.factor`.
FACTORS = (
    "rule",
    "repeat_location",
    "asb_category",
    "crime_type",
    "hate_motive",
    "vulnerability",
    "vulnerability_floor",
)


def format_duration(micros: int) -> str:
    """A duration as a policy writes it, in the largest whole unit (``28d``, ``4h``, ``15m``)."""
    seconds, rest = divmod(micros, MICROS_PER_SECOND)
    if rest or seconds <= 0:
        return f"{micros / MICROS_PER_SECOND:g}s"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def level_rank(level: str) -> int:
    """0 for standard, 1 for medium, 2 for high."""
    return LEVELS.index(level)


def higher_level(a: str, b: str) -> str:
    return a if level_rank(a) >= level_rank(b) else b


@dataclass(frozen=True, slots=True)
class Reason:
    """One factor that contributed to a score, with its weight and a sentence saying why.

    ``value`` names what was found (the category, crime type or vulnerability factor). A
    ``rule`` reason also carries the rule id, the incident's count under the rule, the
    rule's threshold and the ids of the incidents counted (sorted).
    """

    factor: str
    weight: int
    detail: str
    value: str | None = None
    rule_id: str | None = None
    count: int | None = None
    threshold: int | None = None
    incident_ids: tuple[str, ...] = ()

    def content(self) -> dict[str, Any]:
        """JSON-ready; the rule fields only on a rule reason."""
        out: dict[str, Any] = {"factor": self.factor, "weight": self.weight, "detail": self.detail}
        if self.value is not None:
            out["value"] = self.value
        if self.rule_id is not None:
            out["rule_id"] = self.rule_id
            out["count"] = self.count
            out["threshold"] = self.threshold
            out["incident_ids"] = list(self.incident_ids)
        return out


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    """The risk level and score of one incident, and every reason for them."""

    level: str
    score: int
    reasons: tuple[Reason, ...]

    def content(self) -> dict[str, Any]:
        """The ``risk_level``, ``risk_score`` and ``reasons`` fields of an assessment."""
        return {
            "risk_level": self.level,
            "risk_score": self.score,
            "reasons": [reason.content() for reason in self.reasons],
        }


#: The risk of an incident that is out of scope or cancelled: it counts for nothing.
NO_RISK = RiskAssessment("standard", 0, ())


def score_incident(
    policy: Policy,
    *,
    code_class: CodeClass,
    vulnerability: Iterable[str] = (),
    rule_counts: Mapping[str, int] | None = None,
    contributing: Mapping[str, Sequence[str]] | None = None,
    repeat_location: bool | None = None,
) -> RiskAssessment:
    """Score one in-scope incident under ``policy.risk``.

    ``contributing`` maps each rule the incident meets to the ids of the incidents counted
    (the engine's :attr:`Assessment.contributing`); ``rule_counts`` gives the counts (when a
    rule is missing from it, the number of contributing ids is used). ``repeat_location``
    says whether the incident's place is a repeat location; None (the default) means "it
    meets a location rule". Unknown vulnerability names are ignored.
    """
    risk = policy.risk
    weights = risk.weights
    counts = rule_counts or {}
    met = contributing or {}
    if met:
        unknown = sorted(set(met) - {rule.id for rule in policy.rules})
        if unknown:
            raise ValueError(f"rule {unknown[0]!r} is not in the policy's rules")
    reasons: list[Reason] = []

    for rule in policy.rules:
        ids = met.get(rule.id)
        if ids is None:
            continue
        count = counts.get(rule.id, len(ids))
        over = max(0, count - rule.threshold)
        weight = weights.rule_met + weights.per_incident_over_threshold * over
        where = (
            f"within {rule.radius_m:g} m of this place"
            if rule.subject == "location"
            else "of this victim"
        )
        detail = (
            f"rule {rule.id} met: {count} incidents {where} in {format_duration(rule.window)} "
            f"(threshold {rule.threshold}); {weights.rule_met} for the rule"
        )
        if over:
            detail += f" + {weights.per_incident_over_threshold} × {over} over the threshold"
        reasons.append(
            Reason(
                factor="rule",
                weight=weight,
                detail=detail,
                rule_id=rule.id,
                count=count,
                threshold=rule.threshold,
                incident_ids=tuple(sorted(ids)),
            )
        )

    if repeat_location is None:
        repeat_location = any(rule.id in met for rule in policy.location_rules)
    if repeat_location:
        reasons.append(
            Reason(
                factor="repeat_location",
                weight=weights.repeat_location,
                detail="the place is a repeat location",
            )
        )

    category = code_class.asb_category
    if category is not None and category in weights.asb_category:
        reasons.append(
            Reason(
                factor="asb_category",
                weight=weights.asb_category[category],
                detail=f"ASB category {category}",
                value=category,
            )
        )

    crime_type = code_class.crime_type
    if crime_type is not None and crime_type in weights.crime_type:
        reasons.append(
            Reason(
                factor="crime_type",
                weight=weights.crime_type[crime_type],
                detail=f"associated crime type {crime_type}",
                value=crime_type,
            )
        )

    recorded = frozenset(vulnerability)
    hate_sources = []
    if "hate_motivated" in recorded:
        hate_sources.append("recorded as a vulnerability factor")
    if crime_type == "hate":
        hate_sources.append("the code's crime type is hate")
    if hate_sources:
        reasons.append(
            Reason(
                factor="hate_motive",
                weight=weights.hate_motive,
                detail=f"hate motive ({'; '.join(hate_sources)})",
                value="hate_motivated",
            )
        )

    factors = [f for f in VULNERABILITY_FACTORS if f in recorded]
    for factor in factors:
        if factor == "hate_motivated":
            continue  # weighed once, as hate_motive
        reasons.append(
            Reason(
                factor="vulnerability",
                weight=weights.vulnerability.get(factor, 0),
                detail=f"vulnerability factor {factor}",
                value=factor,
            )
        )

    score = sum(reason.weight for reason in reasons)
    level = risk.level_for(score)

    floor = risk.vulnerability_floor
    applies = floor.when == "always" or (floor.when == "rule_met" and bool(met))
    if factors and applies and level_rank(level) < level_rank(floor.level):
        condition = " and a rule is met" if floor.when == "rule_met" else ""
        reasons.append(
            Reason(
                factor="vulnerability_floor",
                weight=0,
                detail=(
                    f"vulnerability recorded ({', '.join(factors)}){condition}: at least "
                    f"{floor.level} (score {score} alone gives {level})"
                ),
                value=floor.level,
            )
        )
        level = floor.level
    return RiskAssessment(level=level, score=score, reasons=tuple(reasons))


def score_assessment(
    policy: Policy,
    assessment: Assessment,
    *,
    code_class: CodeClass,
    vulnerability: Iterable[str] = (),
    repeat_location: bool | None = None,
) -> RiskAssessment:
    """Score the incident behind an engine :class:`Assessment`; :data:`NO_RISK` when it is
    out of scope or cancelled."""
    if not assessment.in_scope:
        return NO_RISK
    return score_incident(
        policy,
        code_class=code_class,
        vulnerability=vulnerability,
        rule_counts=assessment.rule_counts,
        contributing=assessment.contributing,
        repeat_location=repeat_location,
    )
