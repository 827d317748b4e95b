"""The user's search preferences: stored per user, or in the session for anonymous visitors."""

from __future__ import annotations

from dataclasses import asdict, fields

from django.core.exceptions import ValidationError

from retrieval.models import PreferredIndex, SearchPreferences
from retrieval.policy import Preferences

SESSION_KEY = "search_preferences"
DEFAULTS = {"mask_threshold": 30, **asdict(Preferences())}
LIMITS = {"mask_threshold": (0, 100), "k": (1, 500), "split": (0, 100)}


def preferences_get(*, user, session) -> dict:
    """All preference values (mask_threshold, k, intersection_first, preferred_index, split)."""
    if user is not None and user.is_authenticated:
        stored = SearchPreferences.objects.filter(user=user).first()
        if stored is None:
            return dict(DEFAULTS)
        return {name: getattr(stored, name) for name in DEFAULTS}
    return {**DEFAULTS, **(session.get(SESSION_KEY) or {})} if session is not None else dict(DEFAULTS)


def preferences_validate(values: dict) -> dict:
    """Checked, typed values; raises ValidationError naming the bad field."""
    clean = {}
    for name, value in values.items():
        if name not in DEFAULTS:
            raise ValidationError({name: "unknown preference"})
        if name in LIMITS:
            low, high = LIMITS[name]
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise ValidationError({name: f"must be a whole number from {low} to {high}"}) from None
            if not low <= number <= high:
                raise ValidationError({name: f"must be from {low} to {high}"})
            clean[name] = number
        elif name == "intersection_first":
            if isinstance(value, str):
                value = value.strip().lower() in ("1", "true", "on", "yes")
            clean[name] = bool(value)
        elif name == "preferred_index":
            if value not in PreferredIndex.values:
                raise ValidationError({name: "must be semantic or content"})
            clean[name] = value
    return clean


def preferences_update(*, user, session, values: dict) -> dict:
    clean = preferences_validate(values)
    if user is not None and user.is_authenticated:
        SearchPreferences.objects.update_or_create(user=user, defaults=clean)
    else:
        session[SESSION_KEY] = {**(session.get(SESSION_KEY) or {}), **clean}
    return preferences_get(user=user, session=session)


def policy_preferences(values: dict) -> Preferences:
    """The subset the merge policy uses."""
    names = {f.name for f in fields(Preferences)}
    return Preferences(**{name: values[name] for name in names})
