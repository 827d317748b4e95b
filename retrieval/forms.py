"""Page forms of the search pages. Preference limits come from the SearchPreferences model's fields."""

from __future__ import annotations

from django import forms

from gallery.forms import FirstErrorFocused
from retrieval.preferences import preference_limits
from retrieval.search import TEXT_MAX_CHARS
from retrieval.spaces import Space


class RangeInput(forms.NumberInput):
    input_type = "range"


class UploadForm(forms.Form):
    file = forms.FileField(label="Image file", allow_empty_file=True)  # decode_image explains an empty file


class TextSearchForm(forms.Form):
    text = forms.CharField(label="Describe what you are looking for", max_length=TEXT_MAX_CHARS)


def _bounded(label: str, name: str, *, slider: bool, help_text: str) -> forms.IntegerField:
    low, high = preference_limits(name)
    widget = RangeInput(attrs={"step": 1}) if slider else forms.NumberInput()
    return forms.IntegerField(label=label, min_value=low, max_value=high, widget=widget, help_text=help_text,
                              show_hidden_initial=True)


class PreferencesForm(FirstErrorFocused, forms.Form):
    """Each field carries the value the page showed (show_hidden_initial): only what this page changed is saved,
    so a second tab, opened before and saved after, does not put back what the first one changed."""

    mask_threshold = _bounded("Mask threshold (%)", "mask_threshold", slider=True,
                              help_text="A pixel belongs to a label's mask when its probability is at least this.")
    k = _bounded("Number of results (k)", "k", slider=False,
                 help_text="How many images a search returns at most.")
    intersection_first = forms.BooleanField(
        label="Show images found by both indexes first", required=False, show_hidden_initial=True,
        help_text="Off: the places are only shared between the two indexes by the split below.")
    preferred_index = forms.ChoiceField(label="Preferred index", choices=Space.choices,
                                        widget=forms.RadioSelect, show_hidden_initial=True,
                                        help_text="Semantic finds the same kind of thing; content finds the same look.")
    split = _bounded("Share of the remaining places for the preferred index (%)", "split", slider=True,
                     help_text="The other index gets the rest.")
