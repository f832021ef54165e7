"""A detector's state as bytes and back: what a worker's checkpoint holds.

A worker that restarts could rebuild its detector by reading every event again (minutes for
a national year: README, "Performance"). A checkpoint lets it start from the state it had
instead, and read only what came after. This module is the codec, pure: no files, no
clock. ``services/repeat_detector/checkpoint.py`` stores the bytes beside the offsets
they were taken at.

What is encoded is :meth:`Detector.export_state <asvat.domain.detector.Detector.export_state>`:
plain values, incident events and the domain's own records (escalation events, reasons,
case-review events), never the policy. The policy is named by a digest
(:func:`policy_digest`); :func:`load` refuses a checkpoint taken under another policy, a
different ``forget`` or another format, since state derived under one set of rules is
not the state another would have derived.

The encoding is pickle (protocol 5), restricted both ways:

* dumping, the domain's records are reduced to their class and their fields in order, so
  loading calls the class as the code does (compiled classes included) and never sets
  attributes behind it; an incident event is rebuilt through its own constructor with its
  shared strings interned, as ingest's decoding does, so restored state takes the memory a
  live one does; a policy object met on the way is an error (it would be copied, not
  shared);
* loading, only the domain's record classes and that one factory may be named: a
  checkpoint file cannot make the worker run anything else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import re
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

from asvat.domain.detector import Detector
from asvat.domain.incident import IncidentEvent, shared_event
from asvat.domain.location import Place
from asvat.domain.policy import Policy

#: Bumped whenever the exported state's shape changes: an older checkpoint is then ignored
#: (the worker rebuilds from the topic), never misread.
FORMAT = 1

_DOMAIN = "asvat.domain."
_POLICY_MODULE = "asvat.domain.policy"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: another format or policy, or unreadable."""


def policy_digest(policy: Policy) -> str:
    """SHA-256 of the policy's content in a canonical form (two equal policies, one
    digest, whatever process or order built them)."""
    text = json.dumps(_canonical(policy), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "@": type(value).__name__,
            **{f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, re.Pattern):
        return {"@": "pattern", "pattern": value.pattern, "flags": value.flags}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"policy_digest: cannot read a {type(value).__name__}")


def dump(detector: Detector, *, forget: bool = True) -> bytes:
    """The detector's state, with the format, the policy digest and ``forget`` (which must
    be what the detector was made with)."""
    out = io.BytesIO()
    _Pickler(out).dump(
        {
            "format": FORMAT,
            "policy": policy_digest(detector.policy),
            "forget": forget,
            "state": detector.export_state(),
        }
    )
    return out.getvalue()


def load(blob: bytes, policy: Policy, *, forget: bool = True) -> Detector:
    """A new detector of ``policy`` holding the state in ``blob`` (from :func:`dump`).

    Raises :class:`CheckpointError` when the blob is of another format, policy or
    ``forget``, or cannot be read.
    """
    try:
        doc = _Unpickler(io.BytesIO(blob)).load()
    except CheckpointError:
        raise
    except Exception as exc:  # a truncated or corrupt blob: any unpickling error
        raise CheckpointError(f"unreadable checkpoint: {type(exc).__name__}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CheckpointError("unreadable checkpoint: not a mapping")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint format {doc.get('format')!r}, expected {FORMAT}")
    digest = policy_digest(policy)
    if doc.get("policy") != digest:
        raise CheckpointError(
            f"checkpoint taken under policy {str(doc.get('policy'))[:12]}…, "
            f"this worker runs {digest[:12]}…"
        )
    if doc.get("forget") is not forget:
        raise CheckpointError(f"checkpoint forget={doc.get('forget')!r}, expected {forget}")
    detector = Detector(policy, forget=forget)
    detector.import_state(doc["state"])
    return detector


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is IncidentEvent:
            return shared_event, _fields(obj)
        if cls is Place:
            return Place, _fields(obj)
        module = cls.__module__
        if module.startswith(_DOMAIN):
            if module == _POLICY_MODULE:
                raise pickle.PicklingError(
                    f"a policy object ({cls.__name__}) in the state: it would be copied"
                )
            if dataclasses.is_dataclass(obj):
                return cls, _fields(obj)
            raise pickle.PicklingError(f"{module}.{cls.__name__} has no checkpoint form")
        return NotImplemented


#: Per dataclass: a getter of its fields' values in order, as one tuple.
_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _fields(obj: Any) -> tuple[Any, ...]:
    cls = type(obj)
    getter = _GETTERS.get(cls)
    if getter is None:
        names = [f.name for f in dataclasses.fields(obj)]
        single = attrgetter(names[0])
        getter = attrgetter(*names) if len(names) > 1 else lambda o: (single(o),)
        getter = _GETTERS[cls] = getter
    return getter(obj)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(_DOMAIN) and module != _POLICY_MODULE:
            found = getattr(__import__(module, fromlist=[name]), name, None)
            if found is shared_event or (
                isinstance(found, type) and dataclasses.is_dataclass(found)
            ):
                return found
        raise CheckpointError(f"a checkpoint may not name {module}.{name}")
