from django.apps import AppConfig


class GalleryConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "gallery"
    verbose_name = "Gallery"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import pre_save

        from gallery import checks  # noqa: F401 - registers itself
        from gallery.accounts import tokens_end_with_a_new_password
        from gallery.imaging import configure_pillow, keep_format_characters_in_upload_names

        configure_pillow()  # the decompression-bomb guard at our pixel limit, in every process
        keep_format_characters_in_upload_names()
        pre_save.connect(tokens_end_with_a_new_password, sender=get_user_model(),
                         dispatch_uid="gallery.tokens_end_with_a_new_password")
