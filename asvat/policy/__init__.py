"""Policy files: the shipped default, and loading the one a command was given."""

from __future__ import annotations

from pathlib import Path

from asvat.domain.policy import Policy, PolicyError, default_policy, load_policy_text


def load_policy(path: Path | None) -> Policy:
    """The policy at ``path``, or the shipped default. Raises :class:`PolicyError`."""
    if path is None:
        return default_policy()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(
            "(file)", f"a readable policy file ({exc.strerror})", str(path), origin=str(path)
        ) from None
    return load_policy_text(text, origin=str(path))
