from django.urls import path

from gallery import api

urlpatterns = [
    path("images/", api.ImageListCreateApi.as_view(), name="api-images"),
    path("images/<int:image_id>/", api.ImageDetailApi.as_view(), name="api-image"),
    path("images/<int:image_id>/retry/", api.ImageRetryApi.as_view(), name="api-image-retry"),
]
