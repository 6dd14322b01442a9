"""The extractor's settings have one home (extraction.config); the settings and the Dagster resource
only fill them, a run config goes on top of the settings' choice, and nothing falls back to
another backend."""
from __future__ import annotations

import pytest

from extraction.config import OpenAIConfig, RulesConfig, backend_config_from_settings
from assets.resources import ExtractorResource


def test_the_resource_offers_exactly_the_fields_of_the_backend_configs():
    config_fields = (set(OpenAIConfig.model_fields) | set(RulesConfig.model_fields)) - {"kind"}
    assert set(ExtractorResource.model_fields) == config_fields | {"backend"}


def test_unset_resource_fields_take_the_defaults_of_the_config_not_their_own():
    config = ExtractorResource(backend="openai", model="m", base_url="http://127.0.0.1:9/v1").backend_config()
    assert config == OpenAIConfig(model="m", base_url="http://127.0.0.1:9/v1")


def test_a_run_config_with_only_a_timeout_keeps_the_settings_llm_backend(monkeypatch, tmp_path):
    from pipeline.definitions import build_definitions
    from pipeline.settings import load_settings

    environ = {"MEDFILIP_EXTRACTOR": "openai", "MEDFILIP_LLM_MODEL": "llama",
               "MEDFILIP_LLM_BASE_URL": "http://127.0.0.1:9/v1", "MEDFILIP_HOME": str(tmp_path)}
    extractor = build_definitions(load_settings(environ=environ)).resources["extractor"]
    config = extractor.model_copy(update={"timeout_s": 5.0}).backend_config()  # what a run config does
    assert isinstance(config, OpenAIConfig)
    assert (config.model, config.base_url, config.timeout_s) == ("llama", "http://127.0.0.1:9/v1", 5.0)


def test_llm_settings_without_the_llm_backend_are_an_error_not_a_silent_rules_run():
    with pytest.raises(ValueError, match="timeout_s only apply to another backend.*extractor.backend"):
        ExtractorResource(timeout_s=5.0).backend_config()


def test_the_llm_backend_without_an_endpoint_is_one_line_naming_the_setting():
    """No default provider: reports never go to an endpoint nobody named."""
    with pytest.raises(ValueError) as info:
        ExtractorResource(backend="openai").backend_config()
    message = str(info.value)
    assert "\n" not in message
    assert "base_url is required (set extractor.base_url in medfilip.yaml, or resources.extractor.config.base_url)" in message
    assert "model is required (set extractor.model in medfilip.yaml, or resources.extractor.config.model)" in message
    with pytest.raises(ValueError, match="concurrency .*greater than or equal to 1"):
        backend_config_from_settings({"backend": "openai", "model": "m", "base_url": "http://h/v1", "concurrency": 0})


def test_an_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="'rules' or 'openai'"):
        backend_config_from_settings({"backend": "gpt"})


def test_the_prompt_version_comes_from_the_files_alone_and_equals_the_backends(tmp_path):
    """The prompt-change sensor runs every 30 s: it hashes files, it never builds a backend."""
    from extraction.backends import instruction_files, instruction_version, make_backend
    from extraction.prompts import default_prompt_dir

    rules = RulesConfig()
    assert instruction_version(rules) == make_backend(rules).version
    llm = OpenAIConfig(base_url="http://127.0.0.1:9/v1", model="m", prompt_dir=default_prompt_dir("text"))
    files = instruction_files(llm)
    assert [f.name for f in files] == ["system.md", "user.md"]
    copy = tmp_path / "prompt"
    copy.mkdir()
    for f in files:
        (copy / f.name).write_bytes(f.read_bytes())
    edited = llm.model_copy(update={"prompt_dir": copy})
    assert instruction_version(edited) == instruction_version(llm)
    (copy / "system.md").write_text((copy / "system.md").read_text() + "\nOne more rule.\n")
    assert instruction_version(edited) != instruction_version(llm)
