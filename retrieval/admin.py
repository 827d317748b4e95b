from django.contrib import admin

from retrieval.models import SearchPreferences


@admin.register(SearchPreferences)
class SearchPreferencesAdmin(admin.ModelAdmin):
    list_display = ("user", "k", "intersection_first", "preferred_index", "split", "mask_threshold")
    search_fields = ("user__username",)
