from django.urls import path

from gallery import api as gallery_api
from retrieval import api

urlpatterns = [
    path("", api.ApiRootApi.as_view(), name="api-root"),
    path("images/", gallery_api.ImageListCreateApi.as_view(), name="api-images"),
    path("images/<int:image_id>/", gallery_api.ImageDetailApi.as_view(), name="api-image"),
    path("images/<int:image_id>/retry/", gallery_api.ImageRetryApi.as_view(), name="api-image-retry"),
    path("search/", api.SearchApi.as_view(), name="api-search"),
    path("preferences/", api.PreferencesApi.as_view(), name="api-preferences"),
    path("status/", api.StatusApi.as_view(), name="api-status"),
    path("status/worker-check/", api.WorkerCheckStartApi.as_view(), name="api-worker-check"),
    path("status/worker-check/<str:task_id>/", api.WorkerCheckResultApi.as_view(), name="api-worker-check-result"),
]
