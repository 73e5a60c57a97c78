"""Secret material (database URL, token, target signing keys) lives only in Secrets."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from .conftest import (
    INLINE_DATABASE_URL,
    INLINE_TOKEN,
    RELEASE,
    Helm,
    Manifests,
    env_of,
)

pytestmark = pytest.mark.timeout(60)

SECRET_SETTINGS = ("SIDECAR_DATABASE_URL", "SIDECAR_TOKEN", "SIDECAR_TARGETS")


def secret_values_of(values: dict[str, Any]) -> set[str]:
    """Every secret string in a values file: signing keys and passwords in target URLs."""
    found = set()
    for target in values["sidecar"]["targets"]:
        if target.get("secret"):
            found.add(target["secret"])
        password = urlsplit(target["url"]).password
        if password:
            found.add(password)
    return found


def assert_only_in_secrets(manifests: Manifests, secrets: set[str]) -> None:
    assert secrets, "no secret values to look for"
    for document in manifests.documents:
        if document["kind"] == "Secret":
            continue
        text = yaml.safe_dump(document) + json.dumps(document)
        for secret in secrets:
            encoded = base64.b64encode(secret.encode()).decode()
            where = f"{document['kind']}/{document['metadata']['name']}"
            assert secret not in text, f"secret value found in {where}"
            assert encoded not in text, f"base64 of a secret value found in {where}"
    in_secrets = "".join(
        json.dumps(secret.get("data", {})) for secret in manifests.of_kind("Secret")
    )
    decoded = "".join(
        base64.b64decode(value).decode()
        for secret in manifests.of_kind("Secret")
        for value in secret.get("data", {}).values()
    )
    for secret in secrets:
        # The search above only means something if the value was rendered at all.
        assert secret in decoded, "secret value not rendered into any Secret"
        assert secret not in in_secrets, "Secret data must be base64, not the plain value"


def test_target_secrets_appear_only_in_a_secret(
    full_manifests: Manifests, full_values: dict[str, Any]
) -> None:
    assert len(secret_values_of(full_values)) >= 3
    assert_only_in_secrets(full_manifests, secret_values_of(full_values))


def test_inline_database_url_and_token_appear_only_in_a_secret(
    inline_secret_manifests: Manifests, full_values: dict[str, Any]
) -> None:
    secrets = secret_values_of(full_values) | {INLINE_DATABASE_URL, INLINE_TOKEN}
    assert_only_in_secrets(inline_secret_manifests, secrets)


def test_no_config_map_is_rendered(
    full_manifests: Manifests, inline_secret_manifests: Manifests
) -> None:
    assert full_manifests.of_kind("ConfigMap") == []
    assert inline_secret_manifests.of_kind("ConfigMap") == []


@pytest.mark.parametrize("setting", SECRET_SETTINGS)
def test_secret_settings_come_from_secret_key_refs(
    inline_secret_manifests: Manifests, setting: str
) -> None:
    entry = env_of(inline_secret_manifests.sidecar)[setting]
    assert "value" not in entry
    ref = entry["valueFrom"]["secretKeyRef"]
    data = inline_secret_manifests.secret_data(ref["name"])
    assert ref["key"] in data


def test_targets_secret_holds_the_targets_as_json(
    full_manifests: Manifests, full_values: dict[str, Any]
) -> None:
    ref = env_of(full_manifests.sidecar)["SIDECAR_TARGETS"]["valueFrom"]["secretKeyRef"]
    targets = json.loads(full_manifests.secret_data(ref["name"])[ref["key"]])
    assert targets == full_values["sidecar"]["targets"]


def test_existing_secret_supplies_database_url_and_token(
    full_manifests: Manifests, full_values: dict[str, Any]
) -> None:
    existing = full_values["secrets"]["existingSecret"]
    keys = full_values["secrets"]["keys"]
    env = env_of(full_manifests.sidecar)
    for setting, key in (("SIDECAR_DATABASE_URL", "databaseUrl"), ("SIDECAR_TOKEN", "token")):
        ref = env[setting]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": existing, "key": keys[key], "optional": True}
    # The chart's own Secret then holds the targets only.
    (secret,) = full_manifests.of_kind("Secret")
    assert set(secret["data"]) == {keys["targets"]}


def test_existing_secret_may_hold_the_targets(helm: Helm) -> None:
    rendered = helm.template("--set", "secrets.existingSecret=sidecar-credentials")
    assert rendered.of_kind("Secret") == []
    ref = env_of(rendered.sidecar)["SIDECAR_TARGETS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "sidecar-credentials", "key": "targets", "optional": True}


def test_no_secret_and_no_secret_settings_by_default(default_manifests: Manifests) -> None:
    assert default_manifests.of_kind("Secret") == []
    env = env_of(default_manifests.sidecar)
    for setting in SECRET_SETTINGS:
        assert setting not in env


def test_pods_restart_when_the_secret_changes(helm: Helm) -> None:
    def checksum(token: str) -> str:
        rendered = helm.template("--set", f"secrets.token={token}")
        annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/secret"]
        return value

    assert checksum("FAKE-TOKEN-one") != checksum("FAKE-TOKEN-two")


def test_secret_is_named_after_the_release(inline_secret_manifests: Manifests) -> None:
    (secret,) = inline_secret_manifests.of_kind("Secret")
    assert secret["metadata"]["name"] == f"{RELEASE}-market-data-sidecar"
    assert secret["type"] == "Opaque"
