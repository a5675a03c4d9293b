"""The Alpaca resource carries every setting of ``AlpacaSourceConfig`` to the source."""

from __future__ import annotations

import pytest

from pipelines.config import AlpacaSourceConfig, load_settings
from resources import AlpacaBarSourceResource
from tests.conftest import SAMPLE_SETTINGS

pytestmark = pytest.mark.unit


def test_every_setting_reaches_the_source() -> None:
    config = AlpacaSourceConfig(
        feed="sip",
        adjustment="split",
        url_override="http://127.0.0.1:9",
        chunk_days=3,
        max_retries=2,
        backoff_base_s=0.25,
        backoff_cap_s=2.0,
        connect_timeout_s=1.5,
        read_timeout_s=7.0,
        max_pages=12,
        feed_delay_minutes=0,
    )
    resource = AlpacaBarSourceResource.from_config(config, api_key="k", secret_key="s")
    assert resource.config() == config
    _, universe = load_settings(SAMPLE_SETTINGS)
    source = resource.source(universe)
    assert source.config == config
    assert source.adjustment == "split" and source.timeout == (1.5, 7.0)


def test_no_setting_is_left_out_of_the_resource() -> None:
    settings = set(AlpacaSourceConfig.model_fields) - {"kind"}
    assert settings <= set(AlpacaBarSourceResource.model_fields)


def test_the_defaults_agree_and_adjust_prices() -> None:
    resource = AlpacaBarSourceResource(api_key="k", secret_key="s")
    assert resource.config() == AlpacaSourceConfig()
    assert resource.adjustment == "all"


def test_an_environment_url_is_used_only_when_the_settings_have_none() -> None:
    env_url = "http://127.0.0.1:8765"
    plain = AlpacaBarSourceResource.from_config(
        AlpacaSourceConfig(), api_key="k", secret_key="s", url_override=env_url
    )
    assert plain.url_override == env_url
    pinned = AlpacaBarSourceResource.from_config(
        AlpacaSourceConfig(url_override="http://127.0.0.1:1"),
        api_key="k",
        secret_key="s",
        url_override=env_url,
    )
    assert pinned.url_override == "http://127.0.0.1:1"


def test_a_cap_below_the_base_is_refused() -> None:
    with pytest.raises(ValueError, match=r"backoff_cap_s .* is below backoff_base_s"):
        AlpacaSourceConfig(backoff_base_s=2.0, backoff_cap_s=1.0)
    with pytest.raises(ValueError, match="backoff_cap_s"):
        AlpacaBarSourceResource(api_key="k", secret_key="s", backoff_cap_s=0.1).config()
