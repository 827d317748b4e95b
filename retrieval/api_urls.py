from django.urls import path

from retrieval import api

urlpatterns = [
    path("", api.ApiRootApi.as_view(), name="api-root"),
    path("status/", api.StatusApi.as_view(), name="api-status"),
    path("status/worker-check/", api.WorkerCheckStartApi.as_view(), name="api-worker-check"),
    path("status/worker-check/<str:task_id>/", api.WorkerCheckResultApi.as_view(), name="api-worker-check-result"),
]
