from django.urls import path, re_path

from retrieval import api

urlpatterns = [
    path("", api.ApiRootApi.as_view(), name="api-root"),
    path("search/", api.SearchApi.as_view(), name="api-search"),
    path("preferences/", api.PreferencesApi.as_view(), name="api-preferences"),
    path("status/", api.StatusApi.as_view(), name="api-status"),
    path("status/worker-check/", api.WorkerCheckStartApi.as_view(), name="api-worker-check"),
    # Any text is a task id to look up (an unknown one is not done), so an odd one gets the JSON answer
    # too rather than the site's HTML 404.
    re_path(r"^status/worker-check/(?P<task_id>[\s\S]*)/$", api.WorkerCheckResultApi.as_view(),
            name="api-worker-check-result"),
]
