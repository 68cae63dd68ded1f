"""Secrets by value: what is registered, how it is masked (pure logic; the end-to-end canary test runs the CLI
against a real server in tests/lms/test_openai_server.py)."""

from __future__ import annotations

import logging

from autoprompt._secrets import RedactingFilter, known_secrets, redact, register_secret, register_url, secrets_from_env
from autoprompt.lms import LMSpec, describe_lm


def test_urls_carry_passwords_users_and_query_tokens():
    register_url("postgresql://autoprompt:pw-canary-31ab@db.example:5432/studies")
    register_url("https://tok-canary-77aa@api.example/v1")
    register_url("http://127.0.0.1:8000/v1?api-key=q-canary-5d0e&v=2")
    assert {"pw-canary-31ab", "tok-canary-77aa", "q-canary-5d0e"} <= known_secrets()
    register_url("postgresql+psycopg2://autoprompt@127.0.0.1:5432/postgres")
    assert "autoprompt" not in known_secrets()  # a database user, alone or next to a password, is not a secret
    text = redact("postgresql://autoprompt:pw-canary-31ab@db/x https://tok-canary-77aa@h ?api-key=q-canary-5d0e")
    assert text == "postgresql://autoprompt:***@db/x https://***@h ?api-key=***"


def test_environment_credentials_by_name_values_redacted():
    secrets_from_env({"MY_SERVICE_API_KEY": "env-canary-key-1", "HF_TOKEN": "env-canary-tok-2", "PATH": "/usr/bin:/bin",
                      "AWS_SECRET_ACCESS_KEY": "env-canary-aws-3", "DB_PASSWORD": "hunt3r"})
    assert {"env-canary-key-1", "env-canary-tok-2", "env-canary-aws-3"} <= known_secrets()
    assert "/usr/bin:/bin" not in known_secrets() and "hunt3r" in known_secrets()  # 6 characters: registered
    register_secret("none")  # too short to be a secret: never masks ordinary words
    assert redact("none of env-canary-key-1") == "none of ***"


def test_longest_secret_first_and_log_records():
    register_secret("abc-canary-123")
    register_secret("abc-canary-123-longer")
    assert redact("k=abc-canary-123-longer") == "k=***"
    record = logging.LogRecord("autoprompt.x", logging.WARNING, __file__, 1, "key %s and %d", ("abc-canary-123", 5),
                               None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "key *** and 5"


def test_lm_settings_and_specs_register_their_secrets():
    spec = LMSpec.parse("hosted_vllm/m", api_base="http://u:spec-canary-pw@h/v1", api_key="spec-canary-key")
    assert {"spec-canary-pw", "spec-canary-key"} <= known_secrets()
    assert "spec-canary-key" not in repr(spec) and "spec-canary-key" not in str(spec.to_dict())
    import dspy

    lm = dspy.LM("openai/x", api_key="sk-x", azure_ad_token="t", aws_session_token="s", access_token="a",
                 vertex_credentials="v", max_tokens=5)
    assert set(describe_lm(lm)["kwargs"]) == {"max_tokens", "temperature"}
