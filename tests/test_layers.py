"""The package's import layers (the import-linter contract in pyproject.toml, run by
``python3 dev.py lint``) and two rules a layers contract cannot state."""

import subprocess
import sys

import grimp


def test_nothing_inside_the_package_imports_its_root():
    graph = grimp.build_graph("django_cio")
    assert graph.find_modules_that_directly_import("django_cio") == set()


def test_importing_the_package_loads_no_models_and_reads_no_settings():
    # Django imports an app's root package before it loads the models (and a settings module
    # may import it): it must not need either.
    probe = ("import sys, django_cio; "
             "assert 'django_cio.models' not in sys.modules, 'models imported'")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_a_celery_module_can_wire_beat_before_django_loads_its_apps():
    # docs/delivery.md: ``from django_cio.beat import beat_schedule`` in proj/celery.py, which
    # Celery imports before Django's apps are ready.
    probe = ("import os; os.environ['DJANGO_SETTINGS_MODULE'] = 'tests.settings'; "
             "from django_cio.beat import beat_schedule; "
             "entry, = beat_schedule().values(); "
             "assert entry['task'] == 'django_cio.tasks.relay_outbox', entry")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
