from django.urls import path

from retrieval import api

urlpatterns = [
    path("", api.ApiRootApi.as_view(), name="api-root"),
    path("search/", api.SearchApi.as_view(), name="api-search"),
    path("preferences/", api.PreferencesApi.as_view(), name="api-preferences"),
    path("status/", api.StatusApi.as_view(), name="api-status"),
    path("status/worker-check/", api.WorkerCheckStartApi.as_view(), name="api-worker-check"),
    path("status/worker-check/<str:task_id>/", api.WorkerCheckResultApi.as_view(), name="api-worker-check-result"),
]
