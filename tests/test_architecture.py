"""Structure that the code keeps (issue 21): one source of each default, imports one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

CONF = ROOT / "conf"

#: keys a root config may set itself: values built from other keys (hydra interpolations)
INTERPOLATED = {"generate": {"output"}, "train": {"output"}}


@pytest.mark.parametrize("verb", ["rollout", "map", "evaluate", "generate", "train", "screen"])
def test_root_configs_hold_no_default_of_their_schema(verb):
    """A verb with a structured schema keeps its defaults there only: its YAML merges the schema."""
    data = yaml.safe_load((CONF / f"{verb}.yaml").read_text())
    assert f"{verb}_schema" in [d if isinstance(d, str) else next(iter(d)) for d in data["defaults"]]
    own = set(data) - {"defaults", "hydra"}
    assert own <= INTERPOLATED.get(verb, set()), f"conf/{verb}.yaml repeats schema defaults: {sorted(own)}"
    for key in own:
        assert "${" in str(data[key])


@pytest.mark.parametrize("name", ["metis", "molecule", "residue", "file"])
def test_mapping_group_configs_hold_no_default_of_their_schema(name):
    data = yaml.safe_load((CONF / "mapping" / f"{name}.yaml").read_text())
    assert set(data) == {"defaults"} and data["defaults"] == [f"{name}_schema"]


def test_composed_rollout_defaults_are_the_schema_defaults(compose_cfg):
    import dataclasses

    from omegaconf import OmegaConf

    from cgsim.rollout.config import RolloutConfig

    cfg = OmegaConf.to_container(compose_cfg("rollout", ["checkpoint=c.pt", "initial=i", "steps=1", "output=o"]))
    schema = dataclasses.asdict(RolloutConfig())
    for key, value in schema.items():
        if key not in ("checkpoint", "initial", "steps", "output"):
            assert cfg[key] == value, key


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports (at any depth: lazy imports inside functions count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _package_imports(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): _imports(p) for p in sorted((ROOT / "cgsim" / package).rglob("*.py"))}


@pytest.mark.parametrize("module, forbidden", [
    ("cgsim/mapping/spec.py", "cgsim.mapping.builders"),
    ("cgsim/mapping/assemble.py", "cgsim.mapping.builders"),
    ("cgsim/mapping/assemble.py", "cgsim.mapping.spec"),
])
def test_mapping_modules_import_one_way(module, forbidden):
    assert forbidden not in _imports(ROOT / module)


@pytest.mark.parametrize("package, forbidden", [
    ("train", ("cgsim.rollout",)),
    ("rollout", ("cgsim.train",)),
    ("model", ("cgsim.train", "cgsim.rollout", "cgsim.data")),
    ("data", ("cgsim.train", "cgsim.rollout")),
])
def test_layers_import_one_way(package, forbidden):
    """Training and rollouts share what sits below both (model, data); the model knows neither."""
    for path, modules in _package_imports(package).items():
        bad = sorted(m for m in modules if m.startswith(forbidden))
        assert not bad, f"{path} imports {bad}"


#: modules that may read a checkpoint dict by its keys: the format itself and the card
CHECKPOINT_READERS = {"cgsim/model/checkpoint.py", "cgsim/model/card.py"}


def test_checkpoint_facts_are_read_through_the_model_card():
    import re

    pattern = re.compile(r"ckpt\[|ckpt\.get\(|\[\"data\"\]\[|\[\"config\"\]\[\"data\"\]")
    hits = []
    for path in [*sorted((ROOT / "cgsim").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]:
        rel = str(path.relative_to(ROOT))
        if rel in CHECKPOINT_READERS:
            continue
        hits += [f"{rel}:{k + 1}" for k, line in enumerate(path.read_text().splitlines()) if pattern.search(line)]
    assert not hits, f"checkpoint fields read by key outside cgsim.model.card: {hits}"


def _package_parts() -> list[str]:
    """cgsim's subpackages (``name/``) and top-level modules (``name.py``), ``__init__.py`` aside."""
    pkg = ROOT / "cgsim"
    return sorted([f"{p.name}/" for p in pkg.iterdir() if (p / "__init__.py").is_file()]
                  + [p.name for p in pkg.glob("*.py") if p.name != "__init__.py"])


def test_readme_layout_names_every_subpackage_and_module_and_points_to_the_design():
    import re

    layout = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = layout.split("```", 2)[1]
    package_lines = "\n".join(line for line in block.splitlines() if line.startswith("  "))  # under cgsim/
    parts = _package_parts()
    assert {"model/", "rollout/", "demo.py", "runtime.py"} <= set(parts)  # the listing itself works
    missing = [p for p in parts if not re.search(rf"(?<![\w./]){re.escape(p)}", package_lines)]
    assert not missing, f"README.md's Layout does not name {missing}"
    assert "`docs/architecture.md`" in layout and (ROOT / "docs" / "architecture.md").is_file()
    for doc in ("README.md", "DEVELOPERS.md"):
        assert "DESIGN.md" not in (ROOT / doc).read_text(), f"{doc} cites a design brief outside the repository"


def test_package_docstring_names_every_subpackage_and_module():
    import cgsim

    names = [p.removesuffix("/").removesuffix(".py") for p in _package_parts() if p != "__main__.py"]
    missing = [n for n in names if f":mod:`cgsim.{n}`" not in cgsim.__doc__]
    assert not missing, f"cgsim/__init__.py's docstring does not name {missing}"
    assert "docs/architecture.md" in cgsim.__doc__
