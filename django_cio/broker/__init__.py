"""How django-cio's messages sit on the broker."""
