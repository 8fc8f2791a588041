"""The package's shape: subpackages import, dependencies flow one way with no cycle, every
module states its public names, and run keys are those of 0.2.0 (cached runs stay valid)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "floe"
# Each package may import only from its own layer and the layers below it.
LAYERS = {"store": 0, "models": 1, "adapters": 2, "method": 3, "pipeline": 4, "eval": 5, "experiments": 6, "cli": 7,
          "app": 8}
MODULES = sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floe_imports(path: Path) -> set[str]:
    """Every floe module ``path`` imports, at module level or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("floe"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                out.add(candidate if (ROOT.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                        else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("floe")}
    return out


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_subpackage_imports_and_lists_its_modules(package):
    module = importlib.import_module(f"floe.{package}")
    assert module.__doc__ and module.__all__ is not None
    for name in module.__all__:
        assert hasattr(module, name) or importlib.import_module(f"floe.{package}.{name}")


def test_dependencies_flow_one_way():
    wrong = []
    for path in MODULES:
        here = LAYERS[_name(path).split(".")[1]]
        for target in _floe_imports(path):
            parts = target.split(".")
            if len(parts) > 1 and parts[1] in LAYERS and LAYERS[parts[1]] > here:
                wrong.append(f"{_name(path)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = {_name(p): {t for t in _floe_imports(p) if t != _name(p)} for p in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2
    for node in graph:
        if not state.get(node):
            visit(node, [node])


def test_modules_are_small_and_declare_their_public_names():
    for path in MODULES:
        tree = ast.parse(path.read_text())
        names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Name)]
        assert "__all__" in names, f"{_name(path)} has no __all__"
        assert len(path.read_text().splitlines()) <= 440, f"{_name(path)} is over ~400 lines"
    for path in MODULES:
        module = importlib.import_module(_name(path))
        missing = [n for n in module.__all__ if not hasattr(module, n)
                   and not (path.name == "__init__.py")]
        assert not missing, f"{_name(path)}.__all__ names missing objects: {missing}"


def test_no_argparse_internals_and_no_help_text_parsing():
    """The app's forms come from the option spec, not from walking a parser."""
    for path in MODULES:
        text = path.read_text()
        for internal in ("._actions", "_SubParsersAction", "_option_string_actions", "_action_groups",
                         r"\(default:"):
            assert internal not in text, f"{_name(path)} uses {internal}"


def test_run_keys_are_those_of_0_3_0(smol_path):
    """The default analysis's warm-up keeps the key 0.3.0 gave it: its cached run is reused.
    (0.3.0 changed what a score run computes: new baselines, fixed layers.json fields.)"""
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.pipeline.data import DataConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.train import TrainConfig
    from floe.pipeline.warmup import warmup_run
    run = warmup_run(Setup(ModelConfig(model="smollm2-135m"), DataConfig(), HydraLoraConfig(), TrainConfig()))
    assert run.id == "warmup-7ab1e2079a49"


def test_training_and_probe_keys_are_those_before_the_setup_object(smol_path):
    """The keys of a sparse training and of a cell and a joint probe, as the code before
    ``Setup`` bundled the four configs computed them (cached runs stay valid)."""
    from floe.adapters.hydralora import HydraLoraConfig
    from floe.experiments.probe import ProbeConfig, probe_key
    from floe.pipeline.data import DataConfig
    from floe.pipeline.setup import ModelConfig, Setup
    from floe.pipeline.sparse import SparseConfig, train_key
    from floe.pipeline.train import TrainConfig
    from floe.store.config import config_hash
    model = ModelConfig(model="smollm2-135m")
    trained = Setup(model, DataConfig(), HydraLoraConfig(layers=[3, 7]), TrainConfig(seed=7))
    assert config_hash(train_key(trained, SparseConfig(layers=[3, 7]))) == "ac016f6c54f1"
    cells = Setup(model, DataConfig(max_samples=32, max_length=64), HydraLoraConfig(),
                  TrainConfig(batch_size=4, lr=1e-3))
    assert config_hash(probe_key(cells, ProbeConfig(seeds=[42, 43]))) == "4c9d0a0e8bcd"
    joint = Setup(model, DataConfig(), HydraLoraConfig(), TrainConfig(seed=7))
    assert config_hash(probe_key(joint, ProbeConfig(schedule="joint"))) == "dc6beb2a1679"


def test_the_project_cache_is_beside_app_py(monkeypatch):
    from floe.store import runs
    monkeypatch.delenv("FLOE_CACHE")
    assert (runs.PROJECT_DIR / "app.py").is_file()
    assert runs.cache_root() == runs.PROJECT_DIR / "cache"


def test_no_private_name_is_imported_across_modules():
    """A helper another module needs is public in its home module (in its ``__all__``)."""
    wrong = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("floe"):
                wrong += [f"{_name(path)} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not wrong, "\n".join(wrong)
