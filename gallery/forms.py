from django import forms


class RangeInput(forms.NumberInput):
    input_type = "range"


class UploadForm(forms.Form):
    file = forms.FileField(label="Image file", allow_empty_file=True)


class TextSearchForm(forms.Form):
    text = forms.CharField(label="Describe what you are looking for", max_length=500)


class PreferencesForm(forms.Form):
    mask_threshold = forms.IntegerField(label="Mask threshold (%)", min_value=0, max_value=100,
                                        widget=RangeInput(attrs={"step": 1}))
    k = forms.IntegerField(label="Number of results (k)", min_value=1, max_value=500)
    intersection_first = forms.BooleanField(label="Show images found by both indexes first", required=False)
    preferred_index = forms.ChoiceField(label="Preferred index",
                                        choices=[("semantic", "Semantic (meaning)"), ("content", "Content (look)")])
    split = forms.IntegerField(label="Share of the remaining places for the preferred index (%)", min_value=0,
                               max_value=100, widget=RangeInput(attrs={"step": 1}))
