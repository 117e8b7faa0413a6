"""The README stays a five-minute read whose links work, and the generated API reference matches the server.

The docs site itself is checked by `make docs` (mkdocs build --strict: broken links and anchors, pages
missing from mkdocs.yml's nav), which `make test` runs before pytest.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target)


def relative_links(markdown: str) -> list[str]:
    """Targets of the markdown links that point into the repository (no scheme, no bare #anchor)."""
    targets = [m.group(1) for m in LINK.finditer(markdown)]
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_is_short():
    count = len(README.read_text().splitlines())
    assert count <= 200, f"README.md has {count} lines; move detail into a docs/ page and link it (limit 200)"


def test_every_relative_link_of_the_readme_exists():
    links = relative_links(README.read_text())
    assert len(links) >= 10  # the picture and the docs pages: a broken pattern would find none
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_link_check_sees_a_missing_file():
    assert relative_links("[a](docs/nowhere.md#x) [b](https://example.com) [c](#top) ![d](docs/x.png)") == [
        "docs/nowhere.md", "docs/x.png"]


def test_the_readme_python_example_runs(engine_dir, tmp_path, monkeypatch):
    """The example as written, on the tiny engine placed where `make demo` puts its engine and pictures."""
    from PIL import Image

    from inpaintrt.sample import sample_picture

    example = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "engine").symlink_to(engine_dir)
    image, mask = sample_picture(96, 64)
    image.save(tmp_path / "out" / "input.png")
    mask.save(tmp_path / "out" / "mask.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    with Image.open(tmp_path / "bench.png") as result:
        manifest = __import__("json").loads((engine_dir / "manifest.json").read_text())["model"]
        assert result.size == (manifest["default_width"], manifest["default_height"])


def test_the_api_reference_is_what_the_server_schema_gives_now(engine_dir):
    spec = importlib.util.spec_from_file_location("make_api_reference", ROOT / "docs" / "make_api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.PAGE.read_text()
    assert written == module.api_reference(engine_dir), (
        f"docs/api-reference.md no longer matches the server's OpenAPI schema; regenerate it with "
        f"`{module.COMMAND}` and commit it")
