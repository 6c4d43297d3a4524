import pytest
from django.core.checks import Error, Warning
from django.test import override_settings

from django_cio.checks import check_broker, check_control_queue, check_settings
from tests.celery_app import app as celery_app

LOCMEM_CACHE = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
GOOD = {"SITE_ID": "s", "API_KEY": "k"}


def ids(**cio):
    with override_settings(CUSTOMERIO=cio):
        return [message.id for message in check_settings()]


def test_good_settings_pass():
    assert ids(**GOOD) == []


def test_unknown_key_is_E009():
    assert ids(**GOOD, SITEID="x") == ["django_cio.E009"]


def test_missing_credentials_for_http_backend_is_E002():
    with override_settings(CUSTOMERIO={}):
        (message,) = check_settings()
    assert isinstance(message, Error) and message.id == "django_cio.E002"
    assert "SITE_ID" in message.msg and "API_KEY" in message.msg


@pytest.mark.parametrize("backend", ["locmem.LocMemBackend", "console.ConsoleBackend",
                                     "null.NullBackend"])
def test_offline_backends_need_no_credentials(backend):
    assert ids(BACKEND=f"django_cio.backends.{backend}") == []


def test_bad_region_is_E003():
    assert ids(**GOOD, REGION="mars") == ["django_cio.E003"]


def test_bad_rate_limit_is_E004():
    assert ids(**GOOD, RATE_LIMIT="lots") == ["django_cio.E004"]


@pytest.mark.parametrize("url", ["ftp://x", "track.customer.io", "http://"])
def test_track_url_not_http_is_E005(url):
    assert ids(**GOOD, TRACK_URL=url) == ["django_cio.E005"]


def test_unknown_cache_alias_is_E006():
    assert ids(**GOOD, CACHE="nope") == ["django_cio.E006"]


def test_unimportable_backend_is_E007():
    assert ids(**GOOD, BACKEND="django_cio.backends.pigeon.Backend") == ["django_cio.E007"]


def test_a_dedup_cache_that_is_not_redis_is_W001():
    with override_settings(CACHES=LOCMEM_CACHE, CUSTOMERIO=GOOD):
        (message,) = check_settings()
    assert isinstance(message, Warning) and message.id == "django_cio.W001"
    assert "not a Redis cache" in message.msg
    with override_settings(CACHES=LOCMEM_CACHE, CUSTOMERIO={**GOOD, "DEDUP_TTL": 0}):
        assert check_settings() == []


def test_every_problem_is_reported_at_once():
    cio = {"REGION": "mars", "RATE_LIMIT": "lots", "TIMEOUT": 0, "TRACK_URL": 5, "CACHE": "x"}
    assert sorted(ids(**cio)) == ["django_cio.E002", "django_cio.E003", "django_cio.E004",
                                  "django_cio.E005", "django_cio.E006", "django_cio.E020"]


def test_checks_run_under_manage_py_check():
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with override_settings(CUSTOMERIO={"REGION": "mars"}), pytest.raises(
        SystemCheckError, match=r"django_cio\.E002"
    ) as error:
        call_command("check")
    assert "django_cio.E003" in str(error.value)


@pytest.fixture
def transport_options():
    """The test Celery app on a Redis broker (the checks read its URL; nothing connects) and
    its transport options, both restored after the test."""
    saved = dict(celery_app.conf.broker_transport_options), celery_app.conf.broker_url
    celery_app.conf.broker_url = "redis://127.0.0.1:6379/14"
    yield celery_app.conf.broker_transport_options
    celery_app.conf.broker_transport_options, celery_app.conf.broker_url = saved


def test_documented_redis_visibility_timeout_passes(transport_options):
    assert check_broker() == []


def test_visibility_timeout_near_the_retry_countdown_is_W002(transport_options):
    transport_options["visibility_timeout"] = 90
    assert [message.id for message in check_broker()] == ["django_cio.W002"]


def test_default_hour_long_visibility_timeout_is_W003(transport_options):
    del transport_options["visibility_timeout"]
    (message,) = check_broker()
    assert message.id == "django_cio.W003" and "3600 s" in message.msg


def test_visibility_timeout_is_only_a_redis_concern(transport_options):
    transport_options["visibility_timeout"] = 10
    celery_app.conf.broker_url = "amqp://guest:guest@127.0.0.1:5672//"
    assert check_broker() == []


def test_e002_says_missing_and_a_zero_rate_says_above_0():
    with override_settings(CUSTOMERIO={"SITE_ID": "s", "RATE_LIMIT": "0/s"}):
        messages = {message.id: message.msg for message in check_settings()}
    assert "CUSTOMERIO['API_KEY'] missing" in messages["django_cio.E002"]
    assert "with a count above 0" in messages["django_cio.E004"]


def test_publishing_with_celerys_default_app_is_W005(monkeypatch):
    from celery import Celery

    # As in a project whose environment names its broker: the default app reads it too.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")

    from django_cio.checks import check_celery_app

    assert check_celery_app() == []  # the test project's app
    Celery("default", set_as_current=False).set_current()  # proj/__init__.py never imported it
    try:
        with override_settings(CUSTOMERIO=GOOD):
            (message,) = check_celery_app()
            # Not the project's app: its transport options are not the project's either.
            assert check_broker() == []
    finally:
        celery_app.set_current()
    assert message.id == "django_cio.W005" and "Celery's default app" in message.msg
    assert "from .celery import app as celery_app" in message.hint


def test_a_celery_app_on_another_broker_than_the_settings_is_W005():
    from django_cio.checks import check_celery_app

    with override_settings(CUSTOMERIO=GOOD, CELERY_BROKER_URL="redis://elsewhere:6379/0"):
        (message,) = check_celery_app()
    assert message.id == "django_cio.W005" and "not to settings.CELERY_BROKER_URL" in message.msg
    with override_settings(CUSTOMERIO={**GOOD, "BACKEND": "django_cio.backends.null.NullBackend"},
                           CELERY_BROKER_URL="redis://elsewhere:6379/0"):
        assert check_celery_app() == []  # nothing is published


def test_app_url_not_http_is_E030_and_a_bad_app_rate_is_E031():
    assert ids(**GOOD, APP_URL="api.customer.io") == ["django_cio.E030"]
    assert ids(**GOOD, APP_RATE_LIMIT="fast") == ["django_cio.E031"]


def test_django_mail_through_django_cio_without_an_app_key_is_E032():
    with override_settings(EMAIL_BACKEND="django_cio.mail.EmailBackend"):
        assert ids(**GOOD) == ["django_cio.E032"]
        assert ids(**GOOD, APP_API_KEY="a") == []
        assert ids(BACKEND="django_cio.backends.locmem.LocMemBackend") == []


@pytest.mark.parametrize(("exclusive", "found"), [(True, ["django_cio.W006"]), (False, [])])
def test_a_rabbitmq_workers_exclusive_control_queue_is_W006(exclusive, found):
    """Found by the cluster tests: a worker cut from RabbitMQ exited when the link healed."""
    saved = celery_app.conf.broker_url, celery_app.conf.control_queue_exclusive
    celery_app.conf.broker_url = "amqp://guest:guest@127.0.0.1:5672//"
    celery_app.conf.control_queue_exclusive = exclusive
    try:
        assert [message.id for message in check_control_queue()] == found
    finally:
        celery_app.conf.broker_url, celery_app.conf.control_queue_exclusive = saved
