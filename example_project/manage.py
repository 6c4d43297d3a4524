#!/usr/bin/env python
"""The example shop's manage.py (``python manage.py demo`` runs it end to end)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
