"""The detection policy: code classification, scope, lateness and the repeat rules.

A policy is YAML text (see ``asvat/policy/default.yaml``, which documents every default
with its source). :func:`load_policy_text` validates it completely and raises
:class:`PolicyError` naming the offending key and what was expected, so that a bad policy
stops a program at start-up instead of mis-counting quietly.

Besides ``codes``, ``scope``, ``unknown_code``, ``max_lateness`` and ``rules``, a policy may
carry five optional sections: ``risk`` (the scoring model), ``case_review`` (the ASB Case
Review threshold), ``integrity`` (crime data integrity), ``tasking`` (actions and review
cadences per escalation level) and ``retention`` (how long the API keeps personal data).
A section that a policy omits is the shipped default's.
A section that it gives is merged over the shipped one key by key, at every depth of
mappings: a key left out keeps the shipped value; a key given replaces it (a list, such as
a set of phrases or of actions, is replaced whole, never appended to).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml

from asvat.domain.incident import VULNERABILITY_FACTORS
from asvat.domain.timeutil import parse_duration

CLASSES = ("asb", "crime", "non_crime", "other")
ASB_CATEGORIES = ("personal", "nuisance", "environmental")
SUBJECTS = ("victim", "location")

Subject = Literal["victim", "location"]


class PolicyError(ValueError):
    """A policy that cannot be used. ``key`` is the path of the offending entry."""

    def __init__(
        self, key: str, expected: str, got: object = None, *, origin: str = "policy"
    ) -> None:
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{origin}: {key}: expected {expected}{got_text}")
        self.key = key
        self.expected = expected


@dataclass(frozen=True, slots=True)
class CodeClass:
    """What a force incident code means."""

    cls: str
    asb_category: str | None = None
    crime_type: str | None = None
    matter: str | None = None


#: The classification of a code that the policy does not list, when ``unknown_code: other``.
UNKNOWN_CODE = CodeClass("other")


@dataclass(frozen=True, slots=True)
class Rule:
    """A repeat rule: ``threshold`` incidents of one subject within ``window`` (µs)."""

    id: str
    subject: Subject
    window: int
    threshold: int
    radius_m: float | None = None
    max_report_delay: int | None = None

    def counts(self, report_delay: int) -> bool:
        """Whether an incident reported ``report_delay`` µs after it occurred counts."""
        return self.max_report_delay is None or report_delay <= self.max_report_delay


#: Risk levels, lowest first. ``standard`` is the level of an incident that escalates nothing.
LEVELS = ("standard", "medium", "high")
#: The levels at which a subject is escalated (the ``levels`` cut-offs of the risk section).
ESCALATION_LEVELS = ("medium", "high")
#: Crime types associated with ASB (HMICFRS 2024; College of Policing, ASVAT). A policy may
#: weigh or look for these, and any other ``crime_type`` that its codes use.
ASSOCIATED_CRIME_TYPES = (
    "harassment",
    "criminal_damage",
    "public_order",
    "malicious_communications",
    "hate",
)
RISK_WEIGHTS = (
    "rule_met",
    "per_incident_over_threshold",
    "repeat_location",
    "asb_category",
    "crime_type",
    "hate_motive",
    "vulnerability",
)
FLOOR_WHEN = ("never", "rule_met", "always")
CASE_REVIEW_COUNT_BY = ("victim", "location_distinct_reporters")


@dataclass(frozen=True, slots=True)
class RiskWeights:
    """Points per factor (whole numbers). Only ``asb_category`` weights may be negative."""

    rule_met: int
    per_incident_over_threshold: int
    repeat_location: int
    hate_motive: int
    asb_category: Mapping[str, int]
    crime_type: Mapping[str, int]
    vulnerability: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class VulnerabilityFloor:
    """The least level of an incident with a vulnerability factor recorded.

    ``when``: ``rule_met`` (the incident meets at least one rule), ``always`` or ``never``.
    """

    when: str
    level: str


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """The scoring model: weights, the cut-off score of each level, the vulnerability floor."""

    weights: RiskWeights
    levels: Mapping[str, int]
    vulnerability_floor: VulnerabilityFloor

    def level_for(self, score: int) -> str:
        """The highest level whose cut-off ``score`` reaches."""
        level = "standard"
        for name in ESCALATION_LEVELS:
            if score >= self.levels[name]:
                level = name
        return level


@dataclass(frozen=True, slots=True)
class CaseReviewPolicy:
    """The ASB Case Review ("Community Trigger") threshold.

    ``complaints`` qualifying complaints with occurrence time in a ``window`` (µs), each
    reported within ``max_report_delay`` (µs, None for no limit) of the behaviour and of a
    class in ``classes``. ``count_by``: ``victim`` counts one victim's complaints;
    ``location_distinct_reporters`` counts the different people reporting incidents about
    one place (within ``radius_m`` of it or at the same UPRN).
    """

    complaints: int
    window: int
    max_report_delay: int | None
    count_by: str
    classes: frozenset[str]
    radius_m: float


@dataclass(frozen=True, slots=True)
class OffencePhrase:
    """A phrase that discloses an offence, with its whole-word, case-insensitive pattern."""

    offence: str
    phrase: str
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class IntegrityPolicy:
    """Which finalised incidents to check, and what discloses an offence.

    ``disclosing_codes`` None means every code of class ``crime`` discloses an offence when
    it is the opening code.
    """

    finalised_as: frozenset[str]
    disclosing_codes: frozenset[str] | None
    crime_types: tuple[str, ...]
    hate_motive: bool
    phrases: tuple[OffencePhrase, ...]


@dataclass(frozen=True, slots=True)
class TaskAction:
    """A recommended action; ``within`` (µs) of the escalation, or None for no deadline."""

    id: str
    description: str
    within: int | None
    subjects: frozenset[str]


@dataclass(frozen=True, slots=True)
class ReviewCadence:
    """A supervisory review by ``rank`` every ``every`` µs while an escalation is open."""

    rank: str
    every: int


@dataclass(frozen=True, slots=True)
class LevelTasking:
    actions: tuple[TaskAction, ...]
    reviews: tuple[ReviewCadence, ...]


@dataclass(frozen=True, slots=True)
class TaskingPolicy:
    """Per escalation level, what to do and who reviews how often.

    ``review_notice`` (µs): how long before a review is due it is announced (review.due).
    """

    levels: Mapping[str, LevelTasking]
    review_notice: int


@dataclass(frozen=True)
class Policy:
    codes: Mapping[str, CodeClass]
    scope: frozenset[str]
    unknown_code: Literal["reject", "other"]
    max_lateness: int
    rules: tuple[Rule, ...]
    origin: str = "policy"
    victim_rules: tuple[Rule, ...] = field(init=False)
    location_rules: tuple[Rule, ...] = field(init=False)
    # The optional sections; a Policy built in code gets the shipped defaults.
    risk: RiskPolicy = field(default_factory=lambda: _shipped().risk)
    case_review: CaseReviewPolicy = field(default_factory=lambda: _shipped().case_review)
    integrity: IntegrityPolicy = field(default_factory=lambda: _shipped().integrity)
    tasking: TaskingPolicy = field(default_factory=lambda: _shipped().tasking)
    retention: RetentionPolicy = field(default_factory=lambda: _shipped().retention)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "victim_rules", tuple(r for r in self.rules if r.subject == "victim")
        )
        object.__setattr__(
            self, "location_rules", tuple(r for r in self.rules if r.subject == "location")
        )

    @property
    def longest_window(self) -> int:
        return max((r.window for r in self.rules), default=0)

    @property
    def max_radius_m(self) -> float:
        return max((r.radius_m or 0.0 for r in self.location_rules), default=0.0)

    def classify(self, code: str) -> CodeClass | None:
        """The code's classification; ``None`` when unknown and the policy rejects unknown codes."""
        found = self.codes.get(code)
        if found is not None:
            return found
        return UNKNOWN_CODE if self.unknown_code == "other" else None


def _expect_mapping(value: object, key: str, origin: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(key, "a mapping", value, origin=origin)
    return value


def _duration(value: object, key: str, origin: str) -> int:
    try:
        micros = parse_duration(str(value))
    except ValueError:
        raise PolicyError(
            key, "a duration such as '28d' (units s, m, h, d, w)", value, origin=origin
        ) from None
    if micros <= 0:
        raise PolicyError(key, "a duration greater than zero", value, origin=origin)
    return micros


def _codes(raw: object, origin: str) -> dict[str, CodeClass]:
    table = _expect_mapping(raw, "codes", origin)
    if not table:
        raise PolicyError("codes", "at least one code", origin=origin)
    out: dict[str, CodeClass] = {}
    for code, spec in table.items():
        key = f"codes.{code}"
        spec = _expect_mapping(spec, key, origin)
        unknown = set(spec) - {"class", "asb_category", "crime_type", "matter"}
        if unknown:
            raise PolicyError(
                f"{key}.{sorted(unknown)[0]}",
                "one of class, asb_category, crime_type, matter",
                origin=origin,
            )
        cls = spec.get("class")
        if cls not in CLASSES:
            raise PolicyError(f"{key}.class", f"one of {', '.join(CLASSES)}", cls, origin=origin)
        category = spec.get("asb_category")
        if cls == "asb" and category not in ASB_CATEGORIES:
            raise PolicyError(
                f"{key}.asb_category",
                f"one of {', '.join(ASB_CATEGORIES)} for an asb code",
                category,
                origin=origin,
            )
        if cls != "asb" and category is not None:
            raise PolicyError(
                f"{key}.asb_category", "no asb_category on a non-asb code", origin=origin
            )
        crime_type = spec.get("crime_type")
        if crime_type is not None and not isinstance(crime_type, str):
            raise PolicyError(f"{key}.crime_type", "a string", crime_type, origin=origin)
        matter = spec.get("matter")
        if matter is not None and not isinstance(matter, str):
            raise PolicyError(f"{key}.matter", "a string", matter, origin=origin)
        out[str(code)] = CodeClass(str(cls), category, crime_type, matter)
    return out


def _rules(raw: object, origin: str) -> tuple[Rule, ...]:
    if not isinstance(raw, list) or not raw:
        raise PolicyError("rules", "a non-empty list of rules", raw, origin=origin)
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, spec in enumerate(raw):
        key = f"rules[{index}]"
        spec = _expect_mapping(spec, key, origin)
        allowed = {"id", "subject", "window", "threshold", "radius_m", "max_report_delay"}
        unknown = set(spec) - allowed
        if unknown:
            raise PolicyError(
                f"{key}.{sorted(unknown)[0]}", f"one of {', '.join(sorted(allowed))}", origin=origin
            )
        rule_id = spec.get("id")
        if not isinstance(rule_id, str) or not rule_id.strip():
            raise PolicyError(f"{key}.id", "a non-empty string", rule_id, origin=origin)
        if rule_id in seen:
            raise PolicyError(f"{key}.id", "a rule id not used before", rule_id, origin=origin)
        seen.add(rule_id)
        subject = spec.get("subject")
        if subject not in SUBJECTS:
            raise PolicyError(f"{key}.subject", "victim or location", subject, origin=origin)
        if "window" not in spec:
            raise PolicyError(f"{key}.window", "a duration such as '28d'", origin=origin)
        window = _duration(spec["window"], f"{key}.window", origin)
        threshold = spec.get("threshold")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise PolicyError(
                f"{key}.threshold", "a whole number of at least 1", threshold, origin=origin
            )
        radius = spec.get("radius_m")
        if subject == "location":
            if not isinstance(radius, int | float) or isinstance(radius, bool) or radius <= 0:
                raise PolicyError(
                    f"{key}.radius_m", "a distance in metres greater than 0", radius, origin=origin
                )
            if radius > 5000:
                raise PolicyError(f"{key}.radius_m", "at most 5000 metres", radius, origin=origin)
        elif radius is not None:
            raise PolicyError(
                f"{key}.radius_m", "no radius_m on a victim rule", radius, origin=origin
            )
        delay = spec.get("max_report_delay")
        max_delay = None if delay is None else _duration(delay, f"{key}.max_report_delay", origin)
        rules.append(
            Rule(
                id=rule_id,
                subject=subject,
                window=window,
                threshold=threshold,
                radius_m=float(radius) if radius is not None else None,
                max_report_delay=max_delay,
            )
        )
    return tuple(rules)


# -- optional sections: risk, case_review, integrity, tasking ------------------------------

SECTIONS = ("risk", "case_review", "integrity", "tasking", "retention")


@dataclass(frozen=True, slots=True)
class Sections:
    risk: RiskPolicy
    case_review: CaseReviewPolicy
    integrity: IntegrityPolicy
    tasking: TaskingPolicy
    retention: RetentionPolicy


def _only(spec: Mapping[str, Any], allowed: tuple[str, ...], key: str, origin: str) -> None:
    unknown = sorted(str(name) for name in set(spec) - set(allowed))
    if unknown:
        raise PolicyError(f"{key}.{unknown[0]}", f"one of {', '.join(allowed)}", origin=origin)


def _present(spec: Mapping[str, Any], name: str, key: str, expected: str, origin: str) -> Any:
    if name not in spec:
        raise PolicyError(f"{key}.{name}", expected, origin=origin)
    return spec[name]


def _whole(value: object, key: str, origin: str, *, minimum: int | None = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PolicyError(key, "a whole number", value, origin=origin)
    if minimum is not None and value < minimum:
        expected = (
            "a weight of at least 0 (a negative weight is not allowed here)"
            if minimum == 0
            else f"a whole number of at least {minimum}"
        )
        raise PolicyError(key, expected, value, origin=origin)
    return value


def _name_list(value: object, key: str, origin: str) -> list[str]:
    if not isinstance(value, list):
        raise PolicyError(key, "a list", value, origin=origin)
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise PolicyError(f"{key}[{index}]", "a non-empty string", item, origin=origin)
    return value


def _crime_types(codes: Mapping[str, CodeClass]) -> tuple[str, ...]:
    used = sorted(
        {c.crime_type for c in codes.values() if c.crime_type} - set(ASSOCIATED_CRIME_TYPES)
    )
    return (*ASSOCIATED_CRIME_TYPES, *used)


def _merge(shipped: object, given: object) -> object:
    """``given`` over ``shipped``: mappings key by key at every depth; anything else replaces."""
    if isinstance(shipped, Mapping) and isinstance(given, Mapping):
        out = dict(shipped)
        for name, value in given.items():
            out[name] = _merge(shipped[name], value) if name in shipped else value
        return out
    return given


def _risk(raw: object, codes: Mapping[str, CodeClass], origin: str) -> RiskPolicy:
    spec = _expect_mapping(raw, "risk", origin)
    _only(spec, ("weights", "levels", "vulnerability_floor"), "risk", origin)

    weights = _expect_mapping(
        _present(spec, "weights", "risk", "the weights of the factors", origin),
        "risk.weights",
        origin,
    )
    _only(weights, RISK_WEIGHTS, "risk.weights", origin)
    scalar: dict[str, int] = {}
    for name in ("rule_met", "per_incident_over_threshold", "repeat_location", "hate_motive"):
        key = f"risk.weights.{name}"
        scalar[name] = _whole(
            _present(weights, name, "risk.weights", "a weight", origin), key, origin
        )

    key = "risk.weights.asb_category"
    table = _expect_mapping(
        _present(weights, "asb_category", "risk.weights", "a weight per ASB category", origin),
        key,
        origin,
    )
    _only(table, ASB_CATEGORIES, key, origin)
    category: dict[str, int] = {}
    for name in ASB_CATEGORIES:
        # A category is a starting point, so it alone may be negative (below zero for the
        # least harmful category); repeats, crimes, hate and vulnerability only ever add.
        value = _present(table, name, key, "a weight", origin)
        category[name] = _whole(value, f"{key}.{name}", origin, minimum=None)
    if not category["personal"] >= category["nuisance"] >= category["environmental"]:
        raise PolicyError(
            key,
            "personal >= nuisance >= environmental (personal ASB weighs most, environmental least)",
            category,
            origin=origin,
        )

    key = "risk.weights.crime_type"
    table = _expect_mapping(
        _present(weights, "crime_type", "risk.weights", "a weight per crime type", origin),
        key,
        origin,
    )
    known = tuple(c for c in _crime_types(codes) if c != "hate")
    crime: dict[str, int] = {}
    for name, value in table.items():
        if name == "hate":
            raise PolicyError(
                f"{key}.hate",
                "no weight here: a hate motive is weighed by risk.weights.hate_motive",
                origin=origin,
            )
        if name not in known:
            raise PolicyError(
                f"{key}.{name}", f"a crime type: one of {', '.join(known)}", origin=origin
            )
        crime[str(name)] = _whole(value, f"{key}.{name}", origin)

    key = "risk.weights.vulnerability"
    table = _expect_mapping(
        _present(weights, "vulnerability", "risk.weights", "a weight per factor", origin),
        key,
        origin,
    )
    factors = tuple(f for f in VULNERABILITY_FACTORS if f != "hate_motivated")
    vulnerability: dict[str, int] = {}
    for name, value in table.items():
        if name == "hate_motivated":
            raise PolicyError(
                f"{key}.hate_motivated",
                "no weight here: a hate motive is weighed by risk.weights.hate_motive",
                origin=origin,
            )
        if name not in factors:
            raise PolicyError(
                f"{key}.{name}",
                f"a vulnerability factor: one of {', '.join(factors)}",
                origin=origin,
            )
        vulnerability[str(name)] = _whole(value, f"{key}.{name}", origin)

    levels_raw = _expect_mapping(
        _present(spec, "levels", "risk", "the cut-off score of each level", origin),
        "risk.levels",
        origin,
    )
    _only(levels_raw, ESCALATION_LEVELS, "risk.levels", origin)
    levels: dict[str, int] = {}
    for name in ESCALATION_LEVELS:
        value = _present(levels_raw, name, "risk.levels", "a cut-off score", origin)
        levels[name] = _whole(value, f"risk.levels.{name}", origin, minimum=1)
    if not levels["medium"] < levels["high"]:
        raise PolicyError(
            "risk.levels", "levels in increasing order: medium below high", levels, origin=origin
        )

    floor_raw = _expect_mapping(
        _present(spec, "vulnerability_floor", "risk", "a mapping with when and level", origin),
        "risk.vulnerability_floor",
        origin,
    )
    _only(floor_raw, ("when", "level"), "risk.vulnerability_floor", origin)
    when = floor_raw.get("when")
    if when not in FLOOR_WHEN:
        raise PolicyError(
            "risk.vulnerability_floor.when", f"one of {', '.join(FLOOR_WHEN)}", when, origin=origin
        )
    floor_level = floor_raw.get("level")
    if floor_level not in ESCALATION_LEVELS:
        raise PolicyError(
            "risk.vulnerability_floor.level", "medium or high", floor_level, origin=origin
        )
    return RiskPolicy(
        weights=RiskWeights(
            rule_met=scalar["rule_met"],
            per_incident_over_threshold=scalar["per_incident_over_threshold"],
            repeat_location=scalar["repeat_location"],
            hate_motive=scalar["hate_motive"],
            asb_category=category,
            crime_type=crime,
            vulnerability=vulnerability,
        ),
        levels=levels,
        vulnerability_floor=VulnerabilityFloor(when=str(when), level=str(floor_level)),
    )


def _case_review(raw: object, origin: str) -> CaseReviewPolicy:
    spec = _expect_mapping(raw, "case_review", origin)
    allowed = ("complaints", "window", "max_report_delay", "count_by", "classes", "radius_m")
    _only(spec, allowed, "case_review", origin)
    complaints = _whole(
        _present(spec, "complaints", "case_review", "a number of complaints", origin),
        "case_review.complaints",
        origin,
        minimum=1,
    )
    window = _duration(
        _present(spec, "window", "case_review", "a duration such as '183d'", origin),
        "case_review.window",
        origin,
    )
    delay = spec.get("max_report_delay")
    max_delay = None if delay is None else _duration(delay, "case_review.max_report_delay", origin)
    count_by = spec.get("count_by")
    if count_by not in CASE_REVIEW_COUNT_BY:
        raise PolicyError(
            "case_review.count_by",
            f"one of {', '.join(CASE_REVIEW_COUNT_BY)}",
            count_by,
            origin=origin,
        )
    classes = _name_list(
        _present(spec, "classes", "case_review", "a list of classes", origin),
        "case_review.classes",
        origin,
    )
    if not classes:
        raise PolicyError("case_review.classes", "at least one class", origin=origin)
    for index, cls in enumerate(classes):
        if cls not in CLASSES:
            raise PolicyError(
                f"case_review.classes[{index}]", f"one of {', '.join(CLASSES)}", cls, origin=origin
            )
    radius = _present(spec, "radius_m", "case_review", "a distance in metres", origin)
    if not isinstance(radius, int | float) or isinstance(radius, bool) or not 0 < radius <= 5000:
        raise PolicyError(
            "case_review.radius_m",
            "a distance in metres greater than 0 and at most 5000",
            radius,
            origin=origin,
        )
    return CaseReviewPolicy(
        complaints=complaints,
        window=window,
        max_report_delay=max_delay,
        count_by=str(count_by),
        classes=frozenset(classes),
        radius_m=float(radius),
    )


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Whole words, any case, any run of white space between words."""
    body = r"\s+".join(re.escape(word) for word in phrase.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _integrity(raw: object, codes: Mapping[str, CodeClass], origin: str) -> IntegrityPolicy:
    spec = _expect_mapping(raw, "integrity", origin)
    allowed = ("finalised_as", "disclosing_codes", "hate_motive", "offences")
    _only(spec, allowed, "integrity", origin)
    finalised = _name_list(
        _present(spec, "finalised_as", "integrity", "a list of classes", origin),
        "integrity.finalised_as",
        origin,
    )
    for index, cls in enumerate(finalised):
        if cls not in CLASSES:
            raise PolicyError(
                f"integrity.finalised_as[{index}]",
                f"one of {', '.join(CLASSES)}",
                cls,
                origin=origin,
            )
        if cls == "crime":
            raise PolicyError(
                f"integrity.finalised_as[{index}]",
                "a class other than crime (an incident finalised as a crime is recorded)",
                cls,
                origin=origin,
            )
    disclosing_raw = spec.get("disclosing_codes")
    disclosing: frozenset[str] | None = None
    if disclosing_raw is not None:
        names = _name_list(disclosing_raw, "integrity.disclosing_codes", origin)
        for index, code in enumerate(names):
            if code not in codes:
                raise PolicyError(
                    f"integrity.disclosing_codes[{index}]",
                    "a code listed in codes",
                    code,
                    origin=origin,
                )
        disclosing = frozenset(names)
    hate = _present(spec, "hate_motive", "integrity", "true or false", origin)
    if not isinstance(hate, bool):
        raise PolicyError("integrity.hate_motive", "true or false", hate, origin=origin)
    offences = _expect_mapping(
        _present(spec, "offences", "integrity", "phrases per offence", origin),
        "integrity.offences",
        origin,
    )
    known = _crime_types(codes)
    phrases: list[OffencePhrase] = []
    for offence, listed in offences.items():
        key = f"integrity.offences.{offence}"
        if offence not in known:
            raise PolicyError(key, f"an offence: one of {', '.join(known)}", origin=origin)
        for index, phrase in enumerate(_name_list(listed, key, origin)):
            if not re.search(r"\w", phrase):
                raise PolicyError(
                    f"{key}[{index}]", "a phrase with a word in it", phrase, origin=origin
                )
            phrase = " ".join(phrase.split())
            phrases.append(OffencePhrase(str(offence), phrase, phrase_pattern(phrase)))
    return IntegrityPolicy(
        finalised_as=frozenset(finalised),
        disclosing_codes=disclosing,
        crime_types=tuple(str(name) for name in offences),
        hate_motive=hate,
        phrases=tuple(phrases),
    )


def _tasking(raw: object, origin: str) -> TaskingPolicy:
    spec = _expect_mapping(raw, "tasking", origin)
    _only(spec, ("review_notice", *ESCALATION_LEVELS), "tasking", origin)
    notice = _duration(
        _present(spec, "review_notice", "tasking", "a duration such as '3d'", origin),
        "tasking.review_notice",
        origin,
    )
    levels: dict[str, LevelTasking] = {}
    for level in ESCALATION_LEVELS:
        key = f"tasking.{level}"
        level_spec = _expect_mapping(
            _present(spec, level, "tasking", "the actions and reviews of this level", origin),
            key,
            origin,
        )
        _only(level_spec, ("actions", "reviews"), key, origin)
        actions_raw = level_spec.get("actions", [])
        if not isinstance(actions_raw, list):
            raise PolicyError(f"{key}.actions", "a list of actions", actions_raw, origin=origin)
        actions: list[TaskAction] = []
        for index, action in enumerate(actions_raw):
            akey = f"{key}.actions[{index}]"
            action = _expect_mapping(action, akey, origin)
            _only(action, ("id", "description", "within", "subjects"), akey, origin)
            action_id = action.get("id")
            if not isinstance(action_id, str) or not action_id.strip():
                raise PolicyError(f"{akey}.id", "a non-empty string", action_id, origin=origin)
            if any(a.id == action_id for a in actions):
                raise PolicyError(
                    f"{akey}.id",
                    "an action id not used before in this level",
                    action_id,
                    origin=origin,
                )
            description = action.get("description", action_id.replace("_", " "))
            if not isinstance(description, str) or not description.strip():
                raise PolicyError(
                    f"{akey}.description", "a non-empty string", description, origin=origin
                )
            within_raw = action.get("within")
            within = None if within_raw is None else _duration(within_raw, f"{akey}.within", origin)
            subjects = _name_list(
                action.get("subjects", list(SUBJECTS)), f"{akey}.subjects", origin
            )
            for sindex, subject in enumerate(subjects):
                if subject not in SUBJECTS:
                    raise PolicyError(
                        f"{akey}.subjects[{sindex}]", "victim or location", subject, origin=origin
                    )
            if not subjects:
                raise PolicyError(
                    f"{akey}.subjects", "at least one of victim, location", origin=origin
                )
            actions.append(TaskAction(action_id, description, within, frozenset(subjects)))
        reviews_raw = level_spec.get("reviews", [])
        if not isinstance(reviews_raw, list):
            raise PolicyError(f"{key}.reviews", "a list of reviews", reviews_raw, origin=origin)
        reviews: list[ReviewCadence] = []
        for index, review in enumerate(reviews_raw):
            rkey = f"{key}.reviews[{index}]"
            review = _expect_mapping(review, rkey, origin)
            _only(review, ("rank", "every"), rkey, origin)
            rank = review.get("rank")
            if not isinstance(rank, str) or not rank.strip():
                raise PolicyError(f"{rkey}.rank", "a non-empty string", rank, origin=origin)
            if any(r.rank == rank for r in reviews):
                raise PolicyError(
                    f"{rkey}.rank", "a rank not used before in this level", rank, origin=origin
                )
            every = _duration(
                _present(review, "every", rkey, "a duration such as '28d'", origin),
                f"{rkey}.every",
                origin,
            )
            reviews.append(ReviewCadence(rank, every))
        levels[level] = LevelTasking(tuple(actions), tuple(reviews))
    return TaskingPolicy(levels=levels, review_notice=notice)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long the API database keeps personal data (µs), and how often it is purged.

    ``incidents``: assessments (one per incident) by occurrence time; ``escalations``:
    closed escalations with their events and reviews, by last change; ``audit``: audit
    trail entries by when they were written. ``every``: the purge's interval.
    """

    incidents: int
    escalations: int
    audit: int
    every: int


RETENTION_KEYS = ("incidents", "escalations", "audit", "every")


def _retention(raw: object, origin: str) -> RetentionPolicy:
    spec = _expect_mapping(raw, "retention", origin)
    _only(spec, RETENTION_KEYS, "retention", origin)
    values = {
        name: _duration(
            _present(spec, name, "retention", "a duration such as '2192d'", origin),
            f"retention.{name}",
            origin,
        )
        for name in RETENTION_KEYS
    }
    retention = RetentionPolicy(**values)
    for kept in ("incidents", "escalations"):
        if retention.audit < values[kept]:
            raise PolicyError(
                "retention.audit",
                f"at least retention.{kept} ({spec[kept]}): the audit trail must outlive the "
                "records it is about",
                spec["audit"],
                origin=origin,
            )
    return retention


def _check_retention_fits_rules(
    retention: RetentionPolicy, rules: tuple[Rule, ...], max_lateness: int, origin: str
) -> None:
    """The API must not forget an incident the worker can still re-assess."""
    needed = max((r.window for r in rules), default=0) + max_lateness
    if retention.incidents < needed:
        days = -(-needed // 86_400_000_000)
        raise PolicyError(
            "retention.incidents",
            f"at least the longest rule window plus max_lateness ({days}d), since the "
            "worker can still re-assess an incident until then",
            format_duration_days(retention.incidents),
            origin=origin,
        )


def format_duration_days(micros: int) -> str:
    """A duration as whole days where it is one (``2192d``), else seconds."""
    day = 86_400_000_000
    return f"{micros // day}d" if micros % day == 0 else f"{micros // 1_000_000}s"


@cache
def _shipped_raw_sections() -> dict[str, Any]:
    doc = yaml.safe_load(default_policy_text())
    return {name: doc[name] for name in SECTIONS}


def _sections(root: Mapping[str, Any], codes: Mapping[str, CodeClass], origin: str) -> Sections:
    """The optional sections of ``root``, each merged over the shipped default's."""
    shipped = _shipped_raw_sections()
    merged: dict[str, object] = {}
    for name in SECTIONS:
        given = root.get(name)
        if given is None:
            merged[name] = shipped[name]
        else:
            merged[name] = _merge(shipped[name], _expect_mapping(given, name, origin))
    return Sections(
        risk=_risk(merged["risk"], codes, origin),
        case_review=_case_review(merged["case_review"], origin),
        integrity=_integrity(merged["integrity"], codes, origin),
        tasking=_tasking(merged["tasking"], origin),
        retention=_retention(merged["retention"], origin),
    )


@cache
def shipped_sections() -> Sections:
    """The optional sections as the shipped default policy declares them."""
    return _sections({}, {}, "default policy")


def _shipped() -> Sections:
    return shipped_sections()


def policy_from_mapping(doc: object, origin: str = "policy") -> Policy:
    """Validate a parsed policy document and build a :class:`Policy`."""
    root = _expect_mapping(doc, "(top level)", origin)
    known = {"codes", "scope", "unknown_code", "max_lateness", "rules", *SECTIONS}
    unknown = set(root) - known
    if unknown:
        raise PolicyError(
            sorted(unknown)[0], f"one of the sections {', '.join(sorted(known))}", origin=origin
        )
    for required in ("codes", "scope", "rules"):
        if required not in root:
            raise PolicyError(required, "this section to be present", origin=origin)
    codes = _codes(root["codes"], origin)
    scope_raw = root["scope"]
    if not isinstance(scope_raw, list) or not scope_raw:
        raise PolicyError(
            "scope", f"a non-empty list of classes ({', '.join(CLASSES)})", scope_raw, origin=origin
        )
    for index, cls in enumerate(scope_raw):
        if cls not in CLASSES:
            raise PolicyError(f"scope[{index}]", f"one of {', '.join(CLASSES)}", cls, origin=origin)
    unknown_code = root.get("unknown_code", "reject")
    if unknown_code not in ("reject", "other"):
        raise PolicyError("unknown_code", "reject or other", unknown_code, origin=origin)
    max_lateness = _duration(root.get("max_lateness", "400d"), "max_lateness", origin)
    rules = _rules(root["rules"], origin)
    sections = _sections(root, codes, origin)
    _check_retention_fits_rules(sections.retention, rules, max_lateness, origin)
    return Policy(
        codes=codes,
        scope=frozenset(scope_raw),
        unknown_code=unknown_code,
        max_lateness=max_lateness,
        rules=rules,
        origin=origin,
        risk=sections.risk,
        case_review=sections.case_review,
        integrity=sections.integrity,
        tasking=sections.tasking,
        retention=sections.retention,
    )


def load_policy_text(text: str, origin: str = "policy") -> Policy:
    """Parse and validate policy YAML text."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError("(file)", f"valid YAML ({exc})", origin=origin) from None
    return policy_from_mapping(doc, origin)


def default_policy_text() -> str:
    """The shipped default policy, with its comments and sources."""
    return resources.files("asvat.policy").joinpath("default.yaml").read_text(encoding="utf-8")


def default_policy() -> Policy:
    return load_policy_text(default_policy_text(), origin="default policy")
