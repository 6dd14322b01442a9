"""The extractor's settings have one home (extraction.config); the Dagster resource only fills
them, merging a run config onto the environment's choice, and never falls back to another backend."""
from __future__ import annotations

import pytest

from extraction.config import OpenAIConfig, RulesConfig, backend_config_from_settings, settings_from_env
from pipeline.resources import ExtractorResource


def test_the_resource_offers_exactly_the_fields_of_the_backend_configs():
    config_fields = (set(OpenAIConfig.model_fields) | set(RulesConfig.model_fields)) - {"kind"}
    assert set(ExtractorResource.model_fields) == config_fields | {"backend"}


def test_unset_resource_fields_take_the_defaults_of_the_config_not_their_own(monkeypatch):
    for name in ("MEDFILIP_EXTRACTOR", "MEDFILIP_LLM_MODEL", "MEDFILIP_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    config = ExtractorResource(backend="openai", model="m", base_url="http://127.0.0.1:9/v1").backend_config()
    assert config == OpenAIConfig(model="m", base_url="http://127.0.0.1:9/v1")


def test_a_run_config_with_only_a_timeout_keeps_the_environments_llm_backend(monkeypatch):
    monkeypatch.setenv("MEDFILIP_EXTRACTOR", "openai")
    monkeypatch.setenv("MEDFILIP_LLM_MODEL", "llama")
    monkeypatch.setenv("MEDFILIP_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    config = ExtractorResource(timeout_s=5.0).backend_config()
    assert isinstance(config, OpenAIConfig)
    assert (config.model, config.base_url, config.timeout_s) == ("llama", "http://127.0.0.1:9/v1", 5.0)


def test_llm_settings_without_the_llm_backend_are_an_error_not_a_silent_rules_run(monkeypatch):
    monkeypatch.delenv("MEDFILIP_EXTRACTOR", raising=False)
    with pytest.raises(ValueError, match="timeout_s only apply to another backend.*MEDFILIP_EXTRACTOR"):
        ExtractorResource(timeout_s=5.0).backend_config()


def test_environment_settings_are_read_by_field_name_and_blank_values_ignored():
    env = {"MEDFILIP_EXTRACTOR": "openai", "MEDFILIP_LLM_MODEL": "m", "MEDFILIP_LLM_BASE_URL": " ",
           "MEDFILIP_LLM_CONCURRENCY": "3", "UNRELATED": "x"}
    assert settings_from_env(env) == {"backend": "openai", "model": "m", "concurrency": "3"}
    assert backend_config_from_settings({**settings_from_env(env), "base_url": "http://h/v1"}).concurrency == 3


def test_the_llm_backend_without_an_endpoint_is_one_line_naming_the_setting(monkeypatch):
    """No default provider: reports never go to an endpoint nobody named."""
    for name in ("MEDFILIP_LLM_MODEL", "MEDFILIP_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDFILIP_EXTRACTOR", "openai")
    with pytest.raises(ValueError) as info:
        ExtractorResource().backend_config()
    message = str(info.value)
    assert "\n" not in message
    assert "base_url is required (set resources.extractor.config.base_url or MEDFILIP_LLM_BASE_URL)" in message
    assert "model is required (set resources.extractor.config.model or MEDFILIP_LLM_MODEL)" in message
    with pytest.raises(ValueError, match="concurrency .*greater than or equal to 1"):
        backend_config_from_settings({"backend": "openai", "model": "m", "base_url": "http://h/v1", "concurrency": 0})


def test_an_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="'rules' or 'openai'"):
        backend_config_from_settings({"backend": "gpt"})
