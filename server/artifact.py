"""Writing and loading model artifacts: ``torch.export`` programs (``.pt2``).

The model repository stores each model as one ``.pt2`` file. This module is
the one place that exports a probability module (with a dynamic batch
dimension, so one program serves single rows and batches) and loads it back
as a callable, differentiable ``torch.nn.Module``, and that hashes artifacts
for the card's ``artifact_sha256``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

__all__ = ["ProgramModule", "eval_rows_for", "export_probability_module", "load_exported_module", "sha256_file"]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes.

    Args:
        path: the file to hash.
    """
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_probability_module(module: torch.nn.Module, *, n_columns: int, path: Path) -> None:
    """Exports `module` (float32 ``(n, n_columns)`` → probabilities) to a ``.pt2`` file.

    Args:
        module: eager module in eval mode.
        n_columns: width of the encoded input row.
        path: the ``.pt2`` file to write.
    """
    example = torch.zeros(4, n_columns, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
    torch.export.save(program, path)


def load_exported_module(path: Path) -> torch.nn.Module:
    """Loads a ``.pt2`` program as a fast module (float32 ``(n, n_columns)`` → probabilities).

    Same outputs and gradients as ``torch.export.load(path).module()``, at a
    fraction of its per-call cost (see `ProgramModule`).

    Args:
        path: the ``.pt2`` file.
    """
    return ProgramModule(torch.export.load(path))


class ProgramModule(torch.nn.Module):
    """Runs an exported program's graph directly, without the per-call pytree work.

    ``ExportedProgram.module()`` flattens and re-checks the input structure
    with pytree, runs shape guards and walks module attributes on every call:
    several times the cost of the arithmetic for a small MLP. This module
    calls the program's lifted graph (``program.graph_module``: parameters and
    buffers as leading arguments, then the input) with the state held as
    ordinary parameters and buffers under the program's names (so
    ``named_parameters()`` matches the eager module's, and gradients reach
    them), and checks the input with three cheap tests instead of the guards.

    Args:
        program: a loaded program with one tensor input ``(n, n_columns)`` and
            one tensor output, and no buffer mutation.
    """

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        signature = program.graph_signature
        if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
            raise ValueError("programs that mutate buffers or inputs are not supported")
        if len(signature.user_inputs) != 1 or len(signature.user_outputs) != 1:
            raise ValueError("the program must take one input and return one output")
        self._graph = program.graph_module
        # (owner's _parameters or _buffers dict, name): read at each call, so
        # load_state_dict, .to() and friends are seen; eight dict look-ups are cheap.
        self._slots: list[tuple[dict[str, torch.Tensor | None], str]] = []
        kinds = torch.export.graph_signature.InputKind
        for spec in signature.input_specs:
            if spec.kind == kinds.USER_INPUT:
                if len(self._slots) != len(signature.input_specs) - 1:
                    raise ValueError("the user input must be the program's last input")
                continue
            target = str(spec.target)
            if spec.kind == kinds.PARAMETER:
                tensor: torch.Tensor = torch.nn.Parameter(program.state_dict[target])
            elif spec.kind == kinds.BUFFER:
                tensor = program.state_dict[target] if spec.persistent else _constant(program, target)
            elif spec.kind == kinds.CONSTANT_TENSOR:
                tensor = _constant(program, target)
            else:
                raise ValueError(f"unsupported program input kind {spec.kind.name}")
            self._slots.append(_attach(self, target, tensor, persistent=spec.kind != kinds.CONSTANT_TENSOR))
        placeholder = [n for n in program.graph.nodes if n.op == "placeholder"][-1]
        shape = placeholder.meta["val"].shape
        if len(shape) != 2:
            raise ValueError("the program's input must be a matrix (n, n_columns)")
        self.n_columns = int(shape[1])
        self._dtype = placeholder.meta["val"].dtype
        self.eval_rows = eval_rows_for(_widest_row(program, self.n_columns))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Any floating dtype: functional calls (influence functions) run the graph in float64
        # with float64 weights; a dtype that does not match the weights fails inside the graph.
        if x.dim() != 2 or x.shape[1] != self.n_columns or not x.is_floating_point():
            raise ValueError(
                f"expected a floating tensor of shape (n, {self.n_columns}), got {x.dtype} {tuple(x.shape)}"
            )
        state = [table[name] for table, name in self._slots]
        out: tuple[torch.Tensor, ...] = self._graph(*state, x)
        return out[0]


EVAL_FLOATS = 1 << 18
"""Floats (1 MiB) one activation of an evaluation chunk may hold: the chunk stays in cache."""


def eval_rows_for(row_floats: int) -> int:
    """Rows per model call so that the widest activation of a chunk holds about
    `EVAL_FLOATS` floats, a power of two in [256, 32768].

    Why: a large batch's activations spill out of the CPU caches and every
    layer then streams them from memory. Measured on this project's 2-core VM,
    one thread, 65,536 rows: an MLP 10→64→64 took 22 ms in chunks of 1,024–4,096
    rows and 51 ms in chunks of 32,768; 100→256→256 took 190 ms at 1,024 and 424 ms
    at 32,768; 13→32→32 was fastest at 4,096–8,192.

    Args:
        row_floats: floats per row of the model's widest intermediate tensor.
    """
    rows = EVAL_FLOATS // max(1, row_floats)
    return int(min(1 << 15, max(1 << 8, 1 << max(0, rows.bit_length() - 1))))


def _widest_row(program: torch.export.ExportedProgram, n_columns: int) -> int:
    """Floats per row of the widest batch-shaped tensor in the graph (its traced shapes)."""
    widest = n_columns
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() >= 2:
            per_row = 1
            for size in val.shape[1:]:
                if not isinstance(size, int):
                    break  # a symbolic size beyond the batch dimension: not a per-row width
                per_row *= size
            else:
                widest = max(widest, per_row)
    return widest


def _constant(program: torch.export.ExportedProgram, target: str) -> torch.Tensor:
    value = program.constants[target]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"unsupported program constant {target!r}")
    return value


def _attach(
    root: torch.nn.Module, dotted: str, tensor: torch.Tensor, *, persistent: bool
) -> tuple[dict[str, torch.Tensor | None], str]:
    """Registers `tensor` at ``a.b.c`` under `root`, creating plain containers on
    the way; returns the table that holds it and its name there."""
    *path, leaf = dotted.split(".")
    owner = root
    for part in path:
        child = owner._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            owner.add_module(part, child)
        owner = child
    if isinstance(tensor, torch.nn.Parameter):
        owner.register_parameter(leaf, tensor)
        return owner._parameters, leaf  # type: ignore[return-value]
    owner.register_buffer(leaf, tensor, persistent=persistent)
    return owner._buffers, leaf
