from django.urls import path

from gallery import views

# Included by the site's urls under the "pages" namespace, with retrieval's pages.
urlpatterns = [
    path("gallery/", views.gallery_page, name="gallery"),
    path("gallery/add/", views.images_add, name="images-add"),
    path("images/<int:image_id>/", views.image_page, name="image"),
    path("images/<int:image_id>/masks/<int:mask_id>/overlay.png", views.mask_overlay, name="mask-overlay"),
    path("images/<int:image_id>/retry/", views.retry, name="retry"),
    path("images/<int:image_id>/delete/", views.delete, name="delete"),
]
