from django.urls import path

from retrieval import views

# Included by the site's urls under the "pages" namespace, with the gallery's pages.
urlpatterns = [
    path("", views.home, name="home"),
    path("upload/file/", views.staged_file, name="staged-file"),
    path("upload/state/", views.staged_state, name="staged-state"),
    path("upload/overlay/<int:class_index>.png", views.staged_overlay, name="staged-overlay"),
    path("upload/add/", views.staged_add_to_gallery, name="staged-add"),
    path("search/", views.search, name="search"),
    path("preferences/", views.preferences, name="preferences"),
]
