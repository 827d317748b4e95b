from django.db import DatabaseError


def status_banner(request) -> dict:
    """The banner on every page: active model profile, images waiting, index health."""
    if request.path.startswith(("/admin/", "/api/")):
        return {}
    from gallery.models import Image
    from retrieval.encoders.registry import active_models
    from retrieval.integrity import integrity_check

    try:
        health = integrity_check(check_files=False)
        pending = Image.objects.filter(status="pending").count() + Image.objects.filter(masks_status="pending").count()
    except DatabaseError:
        return {"banner": {"profile": active_models().profile, "pending": "?", "index": "database unavailable"}}
    return {"banner": {"profile": active_models().profile, "pending": pending, "index": health.state}}
