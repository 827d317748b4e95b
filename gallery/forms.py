"""What every page form of the site shares (the gallery's, the search pages', admin's reset, the password's)."""

from __future__ import annotations

from django import forms


class FirstErrorFocused(forms.BaseForm):
    """A form sent back with errors puts the focus on its first invalid field (`autofocus`, no script needed),
    where a screen reader reads the field, that it is invalid and why (Django's aria-invalid and
    aria-describedby); otherwise the focus would be on the page's body, far from what to correct."""

    def full_clean(self) -> None:
        super().full_clean()
        invalid = [name for name in self.fields if name in self.errors]
        if not invalid:
            return
        for field in self.fields.values():  # one autofocus (the first wins): a field's own gives way
            field.widget.attrs.pop("autofocus", None)
        self.fields[invalid[0]].widget.attrs["autofocus"] = True
