"""The user's search preferences: stored per user, or in the session for anonymous visitors.

Their limits and defaults are the SearchPreferences model's fields (validators, default): the page
form, the API and this module all read them from there.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypedDict, cast

from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db.models import Field

from gallery.services import User
from retrieval.models import SearchPreferences
from retrieval.policy import Preferences
from retrieval.spaces import Space

SESSION_KEY = "search_preferences"
NAMES = ("mask_threshold", "k", "intersection_first", "preferred_index", "split")


class PreferenceValues(TypedDict):
    mask_threshold: int
    k: int
    intersection_first: bool
    preferred_index: str
    split: int


class PreferenceOverrides(TypedDict, total=False):
    """Per-query values that replace the saved ones (the search API's k, intersection, policy, split)."""

    k: int
    intersection_first: bool
    preferred_index: str
    split: int


def _field(name: str) -> Field[Any, Any]:
    # Every preference is a concrete field of the model, never the reverse side of a relation.
    return cast("Field[Any, Any]", SearchPreferences._meta.get_field(name))


def preference_limits(name: str) -> tuple[int, int]:
    """(lowest, highest) allowed value of a numeric preference, from the model field's validators."""
    field = _field(name)
    low, high = 0, None
    for validator in field.validators:
        if isinstance(validator, MinValueValidator):
            low = max(low, int(validator.limit_value))
        elif isinstance(validator, MaxValueValidator):
            high = int(validator.limit_value)
    if high is None:
        raise ValueError(f"SearchPreferences.{name} has no upper limit")
    return low, high


def preference_defaults() -> PreferenceValues:
    return PreferenceValues(**{name: _field(name).get_default() for name in NAMES})  # type: ignore[typeddict-item]


def preferences_get(*, user: User | None, session: SessionBase | None) -> PreferenceValues:
    """All preference values (mask_threshold, k, intersection_first, preferred_index, split)."""
    values = preference_defaults()
    if user is not None and user.is_authenticated:
        stored = SearchPreferences.objects.filter(user_id=user.pk).first()
        if stored is not None:
            values.update({name: getattr(stored, name) for name in NAMES})  # type: ignore[typeddict-item]
    elif session is not None:
        # What preferences_update stored there: a validated subset of the values.
        values.update(cast(PreferenceValues, session.get(SESSION_KEY) or {}))
    return values


def preferences_validate(values: dict[str, object]) -> dict[str, object]:
    """Checked, typed values; raises ValidationError naming the bad field."""
    clean: dict[str, object] = {}
    for name, value in values.items():
        if name not in NAMES:
            raise ValidationError({name: "unknown preference"})
        if name == "intersection_first":
            if isinstance(value, str):
                value = value.strip().lower() in ("1", "true", "on", "yes")
            clean[name] = bool(value)
        elif name == "preferred_index":
            if value not in Space.values:
                raise ValidationError({name: "must be semantic or content"})
            clean[name] = value
        else:
            low, high = preference_limits(name)
            try:
                number = int(value)  # type: ignore[call-overload]
            except (TypeError, ValueError):
                raise ValidationError({name: f"must be a whole number from {low} to {high}"}) from None
            if not low <= number <= high:
                raise ValidationError({name: f"must be from {low} to {high}"})
            clean[name] = number
    return clean


def preferences_update(*, user: User | None, session: SessionBase | None,
                       values: dict[str, object]) -> PreferenceValues:
    clean = preferences_validate(values)
    if user is not None and user.is_authenticated:
        SearchPreferences.objects.update_or_create(user_id=user.pk, defaults=clean)
    elif session is not None:
        session[SESSION_KEY] = {**(session.get(SESSION_KEY) or {}), **clean}
    return preferences_get(user=user, session=session)


def preferences_keep_from_session(*, user: User, session: SessionBase) -> bool:
    """At sign-in: what a visitor saved in this browser session ("sign in to keep them") becomes the
    account's, over what the account had (it is the newer choice); values that no longer pass the
    limits are dropped, the rest kept. True when the account's preferences took any (the page says so)."""
    saved = session.pop(SESSION_KEY, None)
    if not saved or not user.is_authenticated:
        return False
    clean: dict[str, object] = {}
    for name, value in dict(saved).items():
        try:
            clean.update(preferences_validate({name: value}))
        except ValidationError:
            continue
    if clean:
        SearchPreferences.objects.update_or_create(user_id=user.pk, defaults=clean)
    return bool(clean)


def policy_preferences(values: PreferenceValues, overrides: PreferenceOverrides | None = None) -> Preferences:
    """The subset the merge policy uses, with any per-query overrides applied."""
    chosen = {**values, **(overrides or {})}
    return Preferences(**{f.name: chosen[f.name] for f in fields(Preferences)})  # type: ignore[arg-type]
