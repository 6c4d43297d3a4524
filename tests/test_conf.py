import pytest
from django.conf import settings
from django.test import override_settings

from django_cio.conf import DEFAULTS, Rate, get_settings, parse_rate
from django_cio.exceptions import ConfigurationError


def test_defaults_fill_what_the_user_leaves_out():
    with override_settings(CUSTOMERIO={"SITE_ID": "s", "API_KEY": "k"}):
        cio = get_settings()
    assert cio.region == "us" and cio.queue == "customerio" and cio.batch is True
    assert cio.rate_limit == DEFAULTS["RATE_LIMIT"] and cio.max_retries == 8
    assert cio.base_url == "https://track.customer.io"


def test_override_settings_is_seen_at_once():
    with override_settings(CUSTOMERIO={"REGION": "eu", "QUEUE": "cio-eu"}):
        assert get_settings().base_url == "https://track-eu.customer.io"
        assert get_settings().queue == "cio-eu"
    assert get_settings().queue == settings.CUSTOMERIO["QUEUE"]


def test_track_url_overrides_the_region():
    with override_settings(CUSTOMERIO={"REGION": "eu", "TRACK_URL": "http://127.0.0.1:8765/"}):
        assert get_settings().base_url == "http://127.0.0.1:8765"


def test_missing_setting_means_all_defaults():
    with override_settings():
        from django.conf import settings

        del settings.CUSTOMERIO
        assert get_settings().site_id is None


def test_unknown_keys_are_named():
    with (
        override_settings(CUSTOMERIO={"SITEID": "x", "RATE": 1}),
        pytest.raises(ConfigurationError, match="RATE, SITEID"),
    ):
        get_settings()


@pytest.mark.parametrize("value", [-1, "10", None, True, 0, float("nan"), float("inf")])
def test_numbers_are_checked_by_name(value):
    with (
        override_settings(CUSTOMERIO={"TIMEOUT": value}),
        pytest.raises(ConfigurationError, match=r"CUSTOMERIO\['TIMEOUT'\]"),
    ):
        get_settings()


@pytest.mark.parametrize(("key", "value"), [("BATCH", "yes"), ("ENABLED", 1), ("QUEUE", ""),
                                            ("CACHE", None), ("REGION", 3)])
def test_flags_and_names_are_checked_by_name(key, value):
    with (
        override_settings(CUSTOMERIO={key: value}),
        pytest.raises(ConfigurationError, match=rf"CUSTOMERIO\['{key}'\]"),
    ):
        get_settings()


def test_secrets_stay_out_of_repr():
    with override_settings(CUSTOMERIO={"API_KEY": "sekrit", "REDIS_URL": "redis://:pw@h/0"}):
        text = repr(get_settings())
    assert "sekrit" not in text and "pw@" not in text


@pytest.mark.parametrize(
    ("text", "rate"),
    [("80/s", Rate(80, 1)), ("4800/m", Rate(4800, 60)), ("10/5s", Rate(10, 5)),
     (" 2.5 / h ", Rate(2.5, 3600))],
)
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


def test_rate_per_second():
    assert parse_rate("4800/m").per_second == 80


@pytest.mark.parametrize("text", ["80", "80/d", "fast", "0/s", "-1/s", 80, "/s", "80/0s"])
def test_bad_rates_name_the_key(text):
    with pytest.raises(ConfigurationError, match=r"CUSTOMERIO\['RATE_LIMIT'\]"):
        parse_rate(text)


@pytest.mark.parametrize("workers", [0, 1.5, True, "4"])
def test_rate_limit_workers_must_be_a_positive_integer(workers):
    with override_settings(CUSTOMERIO={"RATE_LIMIT_WORKERS": workers}), pytest.raises(
        ConfigurationError, match="RATE_LIMIT_WORKERS"
    ):
        get_settings()


@pytest.mark.parametrize("url", ["redis//typo", "http://127.0.0.1:6379/0", 5])
def test_redis_url_must_be_a_redis_url(url):
    with override_settings(CUSTOMERIO={"REDIS_URL": url}), pytest.raises(
        ConfigurationError, match="REDIS_URL"
    ):
        get_settings()


def test_every_option_is_a_settings_field_and_in_the_docs():
    import dataclasses
    from pathlib import Path

    from django_cio.conf import NOT_A_DICT, OPTIONS, UNKNOWN_KEYS, CIOSettings

    fields = [f.name for f in dataclasses.fields(CIOSettings)]
    assert fields == [key.lower() for key in OPTIONS] + ["workspace"]
    docs = (Path(__file__).parents[1] / "docs" / "settings.md").read_text()
    for key, option in OPTIONS.items():
        assert f"`{key}`" in docs
        if option.id:
            assert f"`django_cio.{option.id}` | `{key}`" in docs
    ids = [option.id for option in OPTIONS.values() if option.id] + [NOT_A_DICT, UNKNOWN_KEYS]
    assert len(ids) == len(set(ids))  # one id per problem
