import re
from pathlib import Path

import pytest
import yaml

from kdist.config import ConfigError, config_to_yaml, load_config, redacted, validate_config

MINIMAL = {"teacher": {"model": "t"}, "student": {"model": "s"}}
REMOTE = {"kind": "openai", "model": "t", "endpoint": "https://api.example.com/v1"}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_minimal_config_gets_defaults():
    config = validate_config(MINIMAL)
    assert config.teacher.kind == "hf"
    assert config.train.zero_stage == 2
    assert config.data.source.kind == "synthetic_mc"


def test_typo_key_names_the_dotted_path_and_suggests(tmp_path):
    path = write(tmp_path, {**MINIMAL, "teacher": {**REMOTE, "concurency": 4}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "teacher.concurency" in message
    assert "did you mean 'concurrency'" in message
    assert "\n" not in message


def test_wrong_type_and_range_are_reported_with_path():
    with pytest.raises(ConfigError, match=r"'train\.zero_stage'.*less than or equal to 3"):
        validate_config({**MINIMAL, "train": {"zero_stage": 4}})
    with pytest.raises(ConfigError, match=r"'teacher\.concurrency'"):
        validate_config({**MINIMAL, "teacher": {**REMOTE, "concurrency": "many"}})


def test_missing_required_section():
    with pytest.raises(ConfigError, match="missing required key 'student'"):
        validate_config({"teacher": {"model": "t"}})


def test_unknown_key_inside_tagged_union_names_user_path():
    raw = {**MINIMAL, "data": {"source": {"kind": "synthetic_mc", "trian": 5}}}
    with pytest.raises(ConfigError, match=r"unknown key 'data\.source\.trian'.*did you mean 'train'"):
        validate_config(raw)


def test_remote_teacher_needs_endpoint():
    with pytest.raises(ConfigError, match="missing required key .teacher.endpoint."):
        validate_config({**MINIMAL, "teacher": {"model": "gpt", "kind": "openai"}})


def test_dotted_overrides_are_parsed_as_yaml(tmp_path):
    path = write(tmp_path, {**MINIMAL, "teacher": REMOTE})
    config = load_config(path, ["teacher.concurrency=32", "train.lora.target_modules=[q_proj,v_proj]"])
    assert config.teacher.concurrency == 32
    assert config.train.lora.target_modules == ["q_proj", "v_proj"]


def test_exponent_floats_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    # YAML 1.1 (PyYAML's default) reads 2e-4 as a string; validation then refused it
    path = write(tmp_path, {**MINIMAL, "train": {"learning_rate": 1.0}})
    path.write_text(path.read_text().replace("learning_rate: 1.0", "learning_rate: 2e-4"))
    assert load_config(path).train.learning_rate == 2e-4
    config = load_config(path, ["train.learning_rate=+3E-2", "train.max_seconds=1_2e1", "run.name=1e3x"])
    assert config.train.learning_rate == 0.03 and config.train.max_seconds == 120.0
    assert config.run.name == "1e3x"


def test_malformed_override_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(write(tmp_path, MINIMAL), ["teacher.concurrency"])


def test_saved_config_keeps_env_var_names_and_redacts_secret_values():
    config = validate_config({**MINIMAL, "teacher": {**REMOTE, "api_key_env": "OPENAI_API_KEY"}})
    assert "api_key_env: OPENAI_API_KEY" in config_to_yaml(config)
    nested = {"headers": {"Authorization": "Bearer sk-123", "X-Trace": "1"}, "api_key": "sk-456"}
    cleaned = redacted(nested)
    assert cleaned == {"headers": {"Authorization": "***", "X-Trace": "1"}, "api_key": "***"}


def test_saved_config_hides_url_credentials_and_request_extras_outside_the_allow_list():
    teacher = {
        **REMOTE,
        "endpoint": "https://gateway-user:sk-in-url@llm.example.com/v1",
        "request_extras": {"x_gateway": "sk-in-extras", "top_k": 20, "seed": 7},
    }
    saved = config_to_yaml(validate_config({**MINIMAL, "teacher": teacher}))
    assert "sk-in-url" not in saved and "gateway-user" not in saved
    assert "https://***@llm.example.com/v1" in saved
    assert "sk-in-extras" not in saved and "x_gateway: '***'" in saved
    assert "top_k: 20" in saved and "seed: 7" in saved


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("concurrency", True, "'teacher.concurrency': Input should be a valid integer (got True)"),
        ("concurrency", "8", "'teacher.concurrency': Input should be a valid integer (got '8')"),
        ("max_attempts", 2.5, "'teacher.max_attempts': Input should be a valid integer"),
    ],
)
def test_config_types_are_strict_where_a_coercion_would_hide_a_mistake(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({**MINIMAL, "teacher": {**REMOTE, field: value}})


def test_an_integer_is_accepted_where_a_number_is_meant():
    config = validate_config({**MINIMAL, "teacher": {**REMOTE, "timeout_s": 5}})
    assert config.teacher.timeout_s == 5.0


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ({**REMOTE, "tensor_parallel_size": 4}, "'teacher.tensor_parallel_size' is not a setting of kind 'openai' (it belongs to kind vllm); allowed: "),
        ({"model": "t", "concurrency": 8}, "'teacher.concurrency' is not a setting of kind 'hf' (it belongs to kind openai, azure, openai_batch); allowed: "),
        ({"kind": "vllm", "model": "t", "endpoint": "http://x"}, "'teacher.endpoint' is not a setting of kind 'vllm' (it belongs to kind openai, azure, openai_batch)"),
        ({"kind": "triton", "model": "t"}, "'teacher.kind': Input tag 'triton' found using 'kind' does not match any of the expected tags: 'hf', 'openai', 'azure', 'openai_batch', 'vllm'"),
        ({"kind": "azure", "model": "t"}, "missing required key 'teacher.endpoint'"),
    ],
)
def test_an_endpoint_field_of_another_kind_names_the_field_and_the_kind(teacher, message):
    with pytest.raises(ConfigError) as err:
        validate_config({**MINIMAL, "teacher": teacher})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unquoted_api_version_is_the_string_the_user_wrote(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("teacher: {kind: azure, model: m, endpoint: 'https://x', api_version: 2024-10-21}\nstudent: {model: s}\n")
    assert load_config(path).teacher.api_version == "2024-10-21"
