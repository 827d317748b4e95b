from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gallery.accounts import admin_ensure
from gallery.errors import Refused


class Command(BaseCommand):
    help = ("Create the first superuser if none exists. Password from IMAGINAITION_ADMIN_PASSWORD, "
            "else a random one printed once.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            account = admin_ensure(
                username=os.environ.get("IMAGINAITION_ADMIN_USERNAME", "").strip() or "admin",  # blank: the default
                password=os.environ.get("IMAGINAITION_ADMIN_PASSWORD") or None,
                email=os.environ.get("IMAGINAITION_ADMIN_EMAIL", ""),
            )
        except Refused as exc:
            raise CommandError(f"IMAGINAITION_ADMIN_USERNAME / IMAGINAITION_ADMIN_PASSWORD refused: {exc.message}") \
                from None
        if not account.created:
            self.stdout.write("An administrator account already exists.")
        elif account.generated_password:
            self.stdout.write(self.style.WARNING(
                f"Created administrator '{account.username}' with password: {account.generated_password}\n"
                "It is shown only this once: note it, or change it with "
                f"`python manage.py changepassword {account.username}`."))
        else:
            self.stdout.write(f"Created administrator '{account.username}' (password from the environment).")
