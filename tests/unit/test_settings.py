"""Settings from the environment: every value checked, every STOCKSYNC_ variable known, one line naming it."""

from __future__ import annotations

import pytest

from stocksync.settings import Settings, SettingsError


def test_values_are_converted_and_the_test_suites_own_variables_ignored() -> None:
    settings = Settings.from_env(
        {
            "STOCKSYNC_HTTP_PORT": "9001",
            "STOCKSYNC_NATS_REPLICAS": "3",
            "STOCKSYNC_TEST_TIMEOUT_S": "5",
            "HOME": "/",
        }
    )
    assert (settings.http_port, settings.nats_replicas) == (9001, 3)


@pytest.mark.parametrize(
    ("environ", "said"),
    [
        ({"STOCKSYNC_HTTP_PORT": "abc"}, "STOCKSYNC_HTTP_PORT='abc' is not valid: Expected `int`, got `str`"),
        ({"STOCKSYNC_BATCH_MAX": "0"}, "STOCKSYNC_BATCH_MAX='0' is not valid: Expected `int` >= 1"),
        (
            {"STOCKSYNC_DATABSE_URL": "x"},
            "STOCKSYNC_DATABSE_URL is not a setting (did you mean STOCKSYNC_DATABASE_URL?)",
        ),
        ({"STOCKSYNC_COLOUR": "red"}, "STOCKSYNC_COLOUR is not a setting; `stocksync --help` lists them"),
    ],
)
def test_a_bad_variable_is_named_in_one_line(environ: dict[str, str], said: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(environ)
    assert str(raised.value).startswith(said) and "\n" not in str(raised.value)
