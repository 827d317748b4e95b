from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gallery import page_urls as gallery_pages
from retrieval import page_urls as retrieval_pages

urlpatterns = [
    path("admin/gallery/reset/", include("gallery.admin_reset")),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("gallery.api_urls")),
    path("api/", include("retrieval.api_urls")),
    path("", include("gallery.urls")),
    # One "pages" namespace for the site's pages, whichever app serves them.
    path("", include((gallery_pages.urlpatterns + retrieval_pages.urlpatterns, "pages"))),
]
