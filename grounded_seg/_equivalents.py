"""Whether an equivalent of ours may replace a transformers module: fingerprint and self-check.

Four of our modules are installed into transformers models at run time, each in place of a
piece of transformers it was checked equal to: the deformable-attention gather
(``proposers/deformable.py``), the factored image<->text attention (``proposers/fusion.py``),
the per-call backbone cache (``proposers/backbone_cache.py``) and SAM's relative-position
builder (``segmenters/rel_pos.py``). A newer transformers may change what they replace; rather
than diverge silently, each installer asks :func:`refusal` first, which checks two things:

1. the **fingerprint**: a hash of the code (``inspect.getsource``, without docstrings, comments
   and type annotations) of the replaced class's members that the equivalent stands in for,
   which must be one recorded for a transformers version it was verified on
   (:attr:`Equivalent.verified`);
2. a **self-check**: the equivalent and the stock module on a tiny random input (float64 where
   the module allows it, so that only a real difference shows), within a tolerance. It runs
   once per process for each replaced class (and each version of its members).

When either fails, the stock module stays and :func:`log_fallback` writes one INFO line that
says which module was kept and why. Installers return how many equivalents the model holds:
0 after a fallback.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import logging
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Equivalent:
    """One of our equivalents and what it was verified against.

    ``members``: the replaced class's attributes whose source is fingerprinted (the methods the
    equivalent stands in for or relies on). ``verified``: fingerprint -> where it was verified
    (``"transformers 5.25.0"``). ``self_check(stock)``: runs the equivalent and ``stock`` (one
    module of the replaced class) on a tiny random input; returns ``None`` when they agree, or
    what differed.
    """

    name: str
    members: tuple[str, ...]
    verified: Mapping[str, str]
    self_check: Callable[[Any], str | None]


def fingerprint(cls: type, members: Iterable[str]) -> str:
    """sha256 (16 hex digits) of the code of ``cls``'s ``members``, in order: their syntax
    tree without docstrings, comments, type annotations or layout (so that a transformers
    release that only retypes or redocuments a method keeps its fingerprint), written out the
    same way on every Python version. ``"no source"`` when one of them has none (a C function,
    a class made at run time)."""
    digest = hashlib.sha256()
    for member in members:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, member))))
        except (AttributeError, OSError, TypeError, SyntaxError):
            return "no source"
        digest.update(f"{member}={_canonical(_Bare().visit(tree))};".encode())
    return digest.hexdigest()[:16]


class _Bare(ast.NodeTransformer):
    """Drops docstrings and type annotations."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        return super().generic_visit(node)

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        return self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is None:
            return ast.Pass()
        return self.generic_visit(ast.Assign(targets=[node.target], value=node.value))


def _canonical(node: Any) -> str:
    """A syntax tree as text: node names and their non-empty fields (fields that newer Pythons
    add, such as ``type_params``, are empty in code that does not use them)."""
    if isinstance(node, ast.AST):
        fields = [
            f"{name}={_canonical(value)}"
            for name, value in ast.iter_fields(node)
            if value is not None and value != [] and name not in ("type_comment", "kind", "ctx")
        ]
        return f"{type(node).__name__}({', '.join(fields)})"
    if isinstance(node, list):
        return f"[{', '.join(_canonical(item) for item in node)}]"
    return repr(node)


# (equivalent name, class, its members' objects) -> the self-check's answer, once per process;
# a member changed at run time (a new function object) is checked again
_CHECKED: dict[tuple[Any, ...], str | None] = {}


def refusal(equivalent: Equivalent, stock: Any) -> str | None:
    """Why ``equivalent`` may not replace ``stock`` (a module of the class it replaces; a
    module whose methods it replaces, for SAM's builder), or ``None`` when it may."""
    cls = type(stock)
    found = fingerprint(cls, equivalent.members)
    if found not in equivalent.verified:
        versions = ", ".join(sorted(set(equivalent.verified.values()))) or "none"
        return (
            f"the source of {cls.__name__}.{'/'.join(equivalent.members)} is not the one it "
            f"was verified against (fingerprint {found}; verified: {versions})"
        )
    members = (inspect.getattr_static(cls, m, None) for m in equivalent.members)
    key = (equivalent.name, cls, *members)
    if key not in _CHECKED:
        try:
            _CHECKED[key] = equivalent.self_check(stock)
        except Exception as error:  # a changed module may fail in any way
            _CHECKED[key] = f"{type(error).__name__}: {error}"
    answer = _CHECKED[key]
    return None if answer is None else f"its self-check against {cls.__name__} failed: {answer}"


def log_fallback(equivalent: Equivalent, class_name: str, count: int, reason: str) -> None:
    """The one INFO line of a fallback: which stock module stays, how many, and why."""
    logger.info(
        "%s not installed: the stock %s kept (%d module%s): %s",
        equivalent.name,
        class_name,
        count,
        "" if count == 1 else "s",
        reason,
    )


def compare(got: Any, expected: Any, rtol: float = 1e-7) -> str | None:
    """``None`` when two (nested tuples or lists of) tensors have the same structure and shapes
    and agree within ``rtol`` times the largest magnitude of ``expected``; else what differed."""
    got_leaves, expected_leaves = _leaves(got), _leaves(expected)
    if len(got_leaves) != len(expected_leaves):
        return f"{len(got_leaves)} outputs instead of {len(expected_leaves)}"
    for i, (a, b) in enumerate(zip(got_leaves, expected_leaves, strict=True)):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            if a != b:
                return f"output {i}: {a!r} instead of {b!r}"
            continue
        if a.shape != b.shape:
            return f"output {i}: shape {tuple(a.shape)} instead of {tuple(b.shape)}"
        a, b = a.detach().double(), b.detach().double()
        scale = float(b.abs().max()) if b.numel() else 0.0
        error = float((a - b).abs().max()) if b.numel() else 0.0
        if not error <= rtol * max(scale, 1e-30):
            return f"output {i}: max difference {error:.3g} (scale {scale:.3g})"
    return None


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, tuple | list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]
