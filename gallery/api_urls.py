from django.urls import path, re_path

from gallery import api

urlpatterns = [
    path("images/", api.ImageListCreateApi.as_view(), name="api-images"),
    path("images/<int:image_id>/", api.ImageDetailApi.as_view(), name="api-image"),
    path("images/<int:image_id>/retry/", api.ImageRetryApi.as_view(), name="api-image-retry"),
    # An id that is not a whole number (one path segment): the API's JSON 404 for an image, not the
    # site's HTML page. Deeper paths (images/2/masks/) are no endpoint, which the API's last route says.
    # Only paths ending in "/": the site's middleware adds a missing one.
    re_path(r"^images/[^/]*/$", api.NoSuchImageApi.as_view()),
]
