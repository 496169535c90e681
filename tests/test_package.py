"""The package's shape: its public API, no side effects on import, imports only downward."""

import ast
import os
import subprocess
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "simclr_tf")
# Imports allowed inside functions: slow, optional dependencies.
LAZY_OK = {"tensorflow_datasets", "matplotlib", "matplotlib.pyplot",
           "sklearn.manifold", "sklearn.manifold.TSNE"}  # optional extras
# ... and, per module, package modules that load TensorFlow where it must stay unloaded
# (see test_config_imports_without_tensorflow).
LAZY_OK_IN = {"simclr_tf.config.schema": {"simclr_tf.files"},
              "simclr_tf.config.yaml_io": {"tensorflow"},  # remote config paths only
              # Its job: import TensorFlow once its environment is set, without the noise.
              "simclr_tf.env": {"tensorflow"}}


def _modules():
    """{module name: path} of every module of the package."""
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
                module = rel.replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__")
                      else module] = path
    return found


def _imports(path, modules):
    """(package modules imported at module level, modules imported inside functions)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] + [f"{node.module}.{a.name}" for a in node.names])
            inside = any(isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef))
                         for parent in _parents(tree, node))
            for name in names:
                if inside:
                    nested.add(name)
                elif name in modules:
                    top.add(name)
    return top, nested


def _parents(tree, target):
    stack = [(tree, [])]
    while stack:
        node, chain = stack.pop()
        if node is target:
            return chain
        for child in ast.iter_child_nodes(node):
            stack.append((child, chain + [node]))
    return []


def test_no_import_circle_and_no_import_inside_a_function():
    modules = _modules()
    graph, lazy = {}, {}
    for module, path in modules.items():
        top, nested = _imports(path, modules)
        package = module.rsplit(".", 1)[0]
        # A module's own package __init__ runs first anyway: not an edge.
        graph[module] = {m for m in top if m != module and m != "simclr_tf"
                         and not (module.startswith(m + ".") and m == package)}
        lazy[module] = sorted(n for n in nested
                              if n not in LAZY_OK | LAZY_OK_IN.get(module, set()))
    assert {m: n for m, n in lazy.items() if n} == {}
    # Depth-first search for a cycle.
    state = {}

    def visit(module, stack):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert len(graph) > 40  # the walk saw the package


@pytest.mark.slow  # a fresh Python process
def test_public_api_and_no_environment_change_on_import():
    code = (
        "import os, sys\n"
        "import simclr_tf\n"
        "light = 'tensorflow' not in sys.modules  # the package itself loads nothing heavy\n"
        "import tensorflow, keras  # their own environment settings happen here\n"
        "before = dict(os.environ)\n"
        "from simclr_tf import (SimCLRModel, nt_xent_loss, LARS, WarmUpAndCosine, Config,\n"
        "                       load_encoder, export_model, build_model, build_task, TaskModel)\n"
        "changed = sorted(k for k in set(os.environ) | set(before)\n"
        "                 if os.environ.get(k) != before.get(k))\n"
        "tuned = [k for k in ('TF_ENABLE_ONEDNN_OPTS', 'TF_CPU_ALLOCATOR_USE_BFC') if k in os.environ]\n"
        "print(light, changed, tuned, SimCLRModel.__name__, LARS.__name__, callable(nt_xent_loss))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC")}
    env["PYTHONPATH"] = os.path.dirname(PACKAGE)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "True [] [] SimCLRModel LARS True"


def test_unknown_public_name_is_an_attribute_error():
    import simclr_tf

    with pytest.raises(AttributeError, match="no attribute 'Sessionn'"):
        simclr_tf.Sessionn  # noqa: B018


@pytest.mark.slow  # a fresh Python process
def test_config_imports_without_tensorflow():
    """The config (schema, sections, flag table) is plain Python: tools that only build
    or check settings must not pay for, or depend on, TensorFlow and Keras."""
    code = ("import sys\n"
            "import simclr_tf.config as c\n"
            "cfg = c.from_dict({'image_size': 96, 'resnet_depth': '50'}).validate()\n"
            "assert cfg.augment.view1 == ('crop', 'flip', 'color', 'blur'), cfg.augment\n"
            "c.flag_table()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(PACKAGE))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
