from typing import Any

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from gallery import page_urls as gallery_pages
from gallery.api import NoSuchEndpointApi
from imaginaition_site import sign_in
from imaginaition_site.api_renderers import PageLanguageTemplateRenderer
from imaginaition_site.middleware import API_UNKNOWN_ENDPOINT
from retrieval import page_urls as retrieval_pages


class SwaggerDocsView(SpectacularSwaggerSplitView):
    """/api/docs/: drf-spectacular's Swagger UI (served from the installed sidecar: works offline), its
    start-up script a file of its own (?script), since the Content-Security-Policy runs no inline script."""

    renderer_classes = [PageLanguageTemplateRenderer]


class SchemaView(SpectacularAPIView):
    """/api/schema/: YAML unless Accept or ?format= asks for JSON. Its errors (a 401 for an unknown token, a
    405, a 406 for an Accept it does not write) are JSON, as every other API error is: DRF writes them with
    the renderer it negotiated, or else the view's first, YAML."""

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        if response.status_code >= 400:
            # Not negotiated again either: a query string that failed it (too many fields) failed it twice,
            # the second time outside DRF's handler (an HTML 400 and a logged traceback).
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


# Admin is one of the product's interfaces: its tab and header name the product, not Django.
admin.site.site_header = "ImaginAItion administration"
admin.site.site_title = "ImaginAItion admin"

handler400 = "imaginaition_site.views.bad_request"  # JSON under /api/
handler500 = "imaginaition_site.views.server_error"  # JSON under /api/

urlpatterns = [
    # Pages name their icon; a browser showing a bare file (an image's original) asks here instead.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"))),
    path("admin/gallery/reset/", include("gallery.admin_reset")),
    # Before admin's own: the same page, with the old password counted like a sign-in.
    path("admin/password_change/", sign_in.admin_password_change),
    path("admin/", admin.site.urls),
    # Sign in and out, change one's password. No "forgotten password" pages: the service sends no mail
    # (an administrator sets a new password in admin, or with `manage.py changepassword`).
    path("accounts/login/", sign_in.SignInView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # The site's own pages (admin keeps its own at admin/password_change/).
    path("accounts/password_change/",
         sign_in.PasswordChangeCountedView.as_view(template_name="registration/site_password_change.html"),
         name="password_change"),
    path("accounts/password_change/done/",
         auth_views.PasswordChangeDoneView.as_view(template_name="registration/site_password_change_done.html"),
         name="password_change_done"),
    path("api/schema/", SchemaView.as_view(), name="api-schema"),
    path("api/docs/", SwaggerDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/", include("gallery.api_urls")),
    path("api/", include("retrieval.api_urls")),
    re_path(r"^api/[\s\S]*$", NoSuchEndpointApi.as_view(), name=API_UNKNOWN_ENDPOINT),
    path("", include("gallery.urls")),
    # One "pages" namespace for the site's pages, whichever app serves them.
    path("", include((gallery_pages.urlpatterns + retrieval_pages.urlpatterns, "pages"))),
]
