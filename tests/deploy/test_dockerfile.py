"""The image: multi-stage, non-root, liveness healthcheck without curl, `run` by default."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(60)

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cc)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> list[Stage]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before FROM"
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE)


def base_image_default() -> str:
    """The default of the global `ARG BASE_IMAGE`, declared before the first FROM."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    head = text.split("\nFROM ", 1)[0]
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", head, re.MULTILINE)
    assert match, "no global ARG BASE_IMAGE=... before the first FROM"
    return match.group(1)


def test_multi_stage_on_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert {stage.base for stage in stages} == {"${BASE_IMAGE}"}
    assert base_image_default() == "python:3.11-slim"
    final = stages[-1]
    assert any("--from=builder" in args for args in final.args_of("COPY"))


def test_builder_installs_the_redis_extra(stages: list[Stage]) -> None:
    builder = stages[0]
    assert any("[redis]" in args for args in builder.args_of("RUN"))


def test_final_stage_installs_no_compiler(stages: list[Stage]) -> None:
    for args in stages[-1].args_of("RUN"):
        assert not COMPILERS.search(args), args


def test_runs_as_non_root(stages: list[Stage]) -> None:
    (user,) = stages[-1].args_of("USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


def test_working_directory_is_created_before_it_is_used(stages: list[Stage]) -> None:
    """buildah's WORKDIR does not create it, and a read-only root cannot create it later."""
    final = stages[-1]
    (workdir,) = final.args_of("WORKDIR")
    position = final.instructions.index(("WORKDIR", workdir))
    created = [
        args
        for keyword, args in final.instructions[:position]
        if keyword == "RUN" and re.search(rf"mkdir -p [^;&]*{re.escape(workdir)}\b", args)
    ]
    assert created, f"no RUN mkdir -p {workdir} before WORKDIR"
    assert "chown 10001:10001 " + workdir in created[0]


def test_exposes_the_sidecar_port(stages: list[Stage]) -> None:
    assert stages[-1].args_of("EXPOSE") == ["8090"]


def test_healthcheck_calls_livez_without_curl(stages: list[Stage]) -> None:
    (healthcheck,) = stages[-1].args_of("HEALTHCHECK")
    assert "/livez" in healthcheck
    assert "urllib" in healthcheck
    assert "curl" not in healthcheck
    assert "wget" not in healthcheck
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")


def test_entrypoint_and_default_command(stages: list[Stage]) -> None:
    final = stages[-1]
    assert [json.loads(args) for args in final.args_of("ENTRYPOINT")] == [["market-data-sidecar"]]
    assert [json.loads(args) for args in final.args_of("CMD")] == [["run"]]


def test_build_context_holds_only_the_package(stages: list[Stage]) -> None:
    ignore = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*") :].count("*") == 1
    for kept in ("!pyproject.toml", "!src/", "!README.md"):
        assert kept in ignore
    copied = " ".join(args for stage in stages for args in stage.args_of("COPY"))
    for path in ("pyproject.toml", "README.md", "src"):
        assert path in copied
