"""Configuration mistakes that would otherwise fail silently are caught at start-up."""

from __future__ import annotations

import pytest

from market_data_sidecar.settings import ConfigError, load_settings, unknown_variables


@pytest.mark.parametrize("token", ["s3cret\n", " s3cret", "s3 cret", "s3cret\x01"])
def test_a_token_the_store_cannot_send_is_a_config_error(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_TOKEN", token)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "SIDECAR_TOKEN" in str(error.value)
    assert "s3" not in str(error.value)


def test_a_clean_token_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_TOKEN", "s3cret-Token_1")
    token = load_settings().token
    assert token is not None
    assert token.get_secret_value() == "s3cret-Token_1"


def test_an_unknown_variable_is_named_with_the_nearest_setting() -> None:
    environ = {"SIDECAR_TOKN": "x", "SIDECAR_PORT": "8090", "PATH": "/bin"}
    assert unknown_variables(environ) == [
        "unknown setting SIDECAR_TOKN is ignored; did you mean SIDECAR_TOKEN?"
    ]


def test_variables_read_elsewhere_are_not_unknown() -> None:
    assert unknown_variables({"SIDECAR_DEMO_REDIS_URL": "redis://127.0.0.1:6379/0"}) == []
