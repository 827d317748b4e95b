from django.urls import path

from gallery import views

app_name = "pages"

urlpatterns = [
    path("", views.home, name="home"),
    path("upload/file/", views.staged_file, name="staged-file"),
    path("upload/overlay/<int:class_index>.png", views.staged_overlay, name="staged-overlay"),
    path("upload/add/", views.staged_add_to_gallery, name="staged-add"),
    path("search/", views.search, name="search"),
    path("gallery/", views.gallery_page, name="gallery"),
    path("images/<int:image_id>/", views.image_page, name="image"),
    path("images/<int:image_id>/masks/<int:mask_id>/overlay.png", views.mask_overlay, name="mask-overlay"),
    path("images/<int:image_id>/retry/", views.retry, name="retry"),
    path("preferences/", views.preferences, name="preferences"),
]
