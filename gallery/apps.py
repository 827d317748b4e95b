from django.apps import AppConfig


class GalleryConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gallery"
    verbose_name = "Gallery"

    def ready(self) -> None:
        from gallery.imaging import configure_pillow

        configure_pillow()  # the decompression-bomb guard at our pixel limit, in every process
