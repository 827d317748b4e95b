from django.urls import path, re_path

from gallery import api

urlpatterns = [
    path("images/", api.ImageListCreateApi.as_view(), name="api-images"),
    path("images/<int:image_id>/", api.ImageDetailApi.as_view(), name="api-image"),
    path("images/<int:image_id>/retry/", api.ImageRetryApi.as_view(), name="api-image-retry"),
    # Any other path below images/ (an id that is not a whole number): the API's JSON 404, not the
    # site's HTML page. Only paths ending in "/": the site's middleware adds a missing one.
    re_path(r"^images/[\s\S]*/$", api.NoSuchImageApi.as_view()),
]
