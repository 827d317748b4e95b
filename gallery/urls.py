from django.urls import path

from gallery import views_files

app_name = "gallery"

urlpatterns = [
    path("images/<int:image_id>/file/", views_files.image_file, name="image-file"),
    path("images/<int:image_id>/thumbnail/", views_files.image_thumbnail, name="image-thumbnail"),
    path("images/<int:image_id>/masks/<int:mask_id>.png", views_files.mask_png, name="mask-png"),
    path("images/<int:image_id>/thumbnail/<int:size>/", views_files.image_thumbnail, name="image-thumbnail-size"),
]
