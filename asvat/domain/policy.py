"""The detection policy: code classification, scope, lateness and the repeat rules.

A policy is YAML text (see ``asvat/policy/default.yaml``, which documents every default
with its source). :func:`load_policy_text` validates it completely and raises
:class:`PolicyError` naming the offending key and what was expected, so that a bad policy
stops a program at start-up instead of mis-counting quietly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

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


def policy_from_mapping(doc: object, origin: str = "policy") -> Policy:
    """Validate a parsed policy document and build a :class:`Policy`."""
    root = _expect_mapping(doc, "(top level)", origin)
    known = {"codes", "scope", "unknown_code", "max_lateness", "rules"}
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
    return Policy(
        codes=codes,
        scope=frozenset(scope_raw),
        unknown_code=unknown_code,
        max_lateness=max_lateness,
        rules=_rules(root["rules"], origin),
        origin=origin,
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
