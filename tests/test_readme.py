"""README is true: its Python blocks run as written, and its command-line synopsis names exactly
the options ``--help`` shows.

The blocks run on the shapes models: the registry names they use (``grounding-dino-tiny``,
``sam-vit-base``, ...) resolve, through ``$GROUNDED_SEG_WEIGHTS/<name>`` as for any user, to the
bundled shapes models, and ``kitchen.jpg`` is a shapes scene. A block marked
``<!-- readme-test: skip (why) -->`` on the line before it is not run; the reason names the test
that covers it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from grounded_seg.cli.parser import build_parser
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
ALIASES = {  # registry name in README -> the bundled model that stands in for it
    "grounding-dino-tiny": "shapes/gdino",
    "sam-vit-base": "shapes/sam",
    "clip-vit-base-patch32": "shapes/clip",
}


def _blocks() -> list[tuple[int, str, str | None]]:
    found = []
    for match in FENCE.finditer(README):
        line = README.count("\n", 0, match.start("code"))
        skip = re.search(r"<!-- readme-test: skip \((.+)\) -->", match.group("before"))
        found.append((line, match.group("code"), skip.group(1) if skip else None))
    return found


BLOCKS = _blocks()


def test_only_the_blocks_that_need_outside_data_are_skipped():
    skipped = [reason for _, _, reason in BLOCKS if reason]
    assert len(BLOCKS) >= 4 and len(skipped) == 3, skipped


@pytest.fixture
def readme_world(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    for name, bundled in ALIASES.items():
        (weights / name).symlink_to(ROOT / "weights" / bundled, target_is_directory=True)
    monkeypatch.setenv("GROUNDED_SEG_WEIGHTS", str(weights))
    monkeypatch.chdir(tmp_path)
    Image.fromarray(make_scene(HELD_OUT_SEEDS.start + 40).image).save("kitchen.jpg")
    Path("photos").mkdir()
    for seed in range(HELD_OUT_SEEDS.start + 41, HELD_OUT_SEEDS.start + 44):  # label_images' input
        Image.fromarray(make_scene(seed).image).save(f"photos/{seed}.jpg")
    return tmp_path


@pytest.mark.parametrize(
    ("line", "code"),
    [pytest.param(line, code, id=f"README.md:{line}") for line, code, skip in BLOCKS if not skip],
)
def test_readme_python_block_runs(line, code, readme_world):
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)


def _readme_options(command: str) -> set[str]:
    block = README.split("## Command line", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    lines, current = [], None
    for text in block.splitlines():
        if text.startswith("grounded-seg "):
            current = text.split()[1]
        if current == command:
            lines.append(re.sub(r"\([^)]*\)", "", text))  # prose in parentheses is not options
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b", " ".join(lines)))


def _help_options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    options = set()
    for action in sub._actions:  # one name per option: "-o" where README uses it, else the long
        names = action.option_strings
        if names and "--help" not in names and "--verbose" not in names:
            options.add("-o" if "-o" in names else next(n for n in names if n.startswith("--")))
    return options


@pytest.mark.parametrize(
    "command",
    [
        "segment",
        "label",
        "serve",
        "explain",
        "edit",
        "track",
        "eval-video",
        "models",
        "demo",
        "eval",
        "convert",
        "train",
    ],
)
def test_cli_synopsis_matches_help(command):
    assert _readme_options(command) == _help_options(command)
