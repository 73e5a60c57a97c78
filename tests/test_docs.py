"""The docs hold to the code: every link resolves, and the configuration table names
every setting, with its default, exactly once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from market_data_sidecar.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "bench").glob("*.md")),
]
CONFIGURATION = ROOT / "docs" / "configuration.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code is not a link
    return [target for target in LINK.findall(text) if "://" not in target]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (
            anchor and linked.suffix == ".md" and anchor not in anchors(linked)
        ):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def documented() -> dict[str, str]:
    """`SIDECAR_NAME -> default cell` from the configuration table; `A` / `_B` pairs
    spelled out (`_B` replaces as many trailing words of `A`)."""
    rows: dict[str, str] = {}
    for line in CONFIGURATION.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`SIDECAR_"):
            continue
        names = _spelled_out(re.findall(r"`([A-Z_<>]+)`", cells[0]))
        defaults = [part.strip() for part in cells[1].split(" / ")]
        for index, name in enumerate(names):
            for each in _checks(name):
                assert each not in rows, f"{each} documented twice"
                rows[each] = defaults[index] if len(defaults) == len(names) else cells[1]
    return rows


def _spelled_out(names: list[str]) -> list[str]:
    """`_B` after `A` replaces as many trailing words of `A` as it has."""
    full: list[str] = []
    for name in names:
        if name.startswith("_"):
            words = name.strip("_").split("_")
            name = "_".join(full[-1].split("_")[: -len(words)] + words)
        full.append(name)
    return full


def _checks(name: str) -> list[str]:
    """`SIDECAR_<CHECK>_RISE`: one setting per check."""
    if "<CHECK>" not in name:
        return [name]
    return [name.replace("<CHECK>", check) for check in ("DATABASE", "DISK", "QUEUE")]


def settings_names() -> dict[str, Any]:
    return {f"SIDECAR_{name.upper()}": field for name, field in Settings.model_fields.items()}


def test_the_configuration_table_names_every_setting_once() -> None:
    assert set(documented()) == set(settings_names())


def test_the_configuration_table_gives_each_simple_default() -> None:
    """Numbers, booleans and short words: what the table says is what `Settings` has."""
    wrong = []
    for name, cell in documented().items():
        default = settings_names()[name].default
        shown = _first_value(cell)
        if isinstance(default, bool):
            same = shown == str(default).lower()
        elif isinstance(default, int | float):
            same = _number(shown) == default
        elif isinstance(default, str) and default:
            same = shown == default
        else:
            continue
        if not same:
            wrong.append(f"{name}: table {cell!r}, Settings {default!r}")
    assert not wrong, wrong


def _first_value(cell: str) -> str:
    found = re.search(r"`([^`]*)`", cell)
    return (found.group(1) if found else cell).replace(",", "")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
