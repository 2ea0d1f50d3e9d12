"""The fast `.pt2` loader is the same function as ``ExportedProgram.module()``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from desiderata.server.artifact import export_probability_module, load_exported_module, sha256_file
from desiderata.server.demo_data import CREDIT_MODEL_DIR
from desiderata.server.demo_model import CreditNet, Probabilities

MODEL = CREDIT_MODEL_DIR / "model.pt2"


@pytest.mark.parametrize("batch", [1, 50])
def test_outputs_and_gradients_match_the_reference_loader(batch: int) -> None:
    fast, ref = load_exported_module(MODEL), torch.export.load(MODEL).module()
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = torch.randn(batch, 25, generator=torch.Generator().manual_seed(batch)) * 3
    x_fast, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    p_fast, p_ref = fast(x_fast), ref(x_ref)
    torch.testing.assert_close(p_fast, p_ref, atol=0, rtol=0)
    (p_fast[:, 1] * torch.arange(1, batch + 1)).sum().backward()
    (p_ref[:, 1] * torch.arange(1, batch + 1)).sum().backward()
    assert x_fast.grad is not None and x_ref.grad is not None and x_ref.grad.abs().sum() > 0
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=0, rtol=0)
    ref_grads = dict(ref.named_parameters())
    for name, param in fast.named_parameters():
        assert param.grad is not None
        torch.testing.assert_close(param.grad, ref_grads[name].grad, atol=0, rtol=0)


def test_state_changes_are_seen_by_the_graph() -> None:
    fast, ref = load_exported_module(MODEL), torch.export.load(MODEL).module()
    state = {k: v + 0.01 if k.endswith("weight") else v for k, v in ref.state_dict().items()}
    fast.load_state_dict(state)
    ref.load_state_dict(state)
    x = torch.ones(3, 25)
    torch.testing.assert_close(fast(x), ref(x), atol=0, rtol=0)
    assert not torch.equal(fast(x), load_exported_module(MODEL)(x))


def test_rejects_inputs_of_the_wrong_shape_or_type() -> None:
    fast = load_exported_module(MODEL)
    for bad in (torch.zeros(25), torch.zeros(2, 24), torch.zeros(2, 25, dtype=torch.int64)):
        with pytest.raises(ValueError, match=r"\(n, 25\)"):
            fast(bad)


def test_export_round_trip_of_a_fresh_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = Probabilities(CreditNet(torch.zeros(5), torch.ones(5) * 2, n_classes=3)).eval()
    path = tmp_path / "m.pt2"
    export_probability_module(module, n_columns=5, path=path)
    x = torch.randn(7, 5)
    torch.testing.assert_close(load_exported_module(path)(x), module(x), atol=1e-6, rtol=0)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_evaluation_chunk_follows_the_widest_activation(tmp_path: Path) -> None:
    from desiderata.server.artifact import EVAL_FLOATS, eval_rows_for

    assert [eval_rows_for(w) for w in (1, 32, 64, 100, 256, 4096, 10**6)] == [32768, 8192, 4096, 2048, 1024, 256, 256]
    for d, h in ((10, 64), (100, 256)):
        layers = (torch.nn.Linear(d, h), torch.nn.ReLU(), torch.nn.Linear(h, 2), torch.nn.Softmax(-1))
        export_probability_module(torch.nn.Sequential(*layers).eval(), n_columns=d, path=tmp_path / f"m{d}.pt2")
        assert load_exported_module(tmp_path / f"m{d}.pt2").eval_rows == eval_rows_for(h) == EVAL_FLOATS // h


def test_predictions_in_chunks_equal_one_call() -> None:
    from desiderata.server.model_handle import load_model

    handle = load_model(CREDIT_MODEL_DIR)
    x = torch.randn(3 * handle.module.eval_rows + 7, 25, generator=torch.Generator().manual_seed(0)).double().numpy()
    chunked = handle.predict_proba(x)
    with torch.inference_mode():
        whole = handle.module(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    assert chunked.shape == (len(x), 2)
    torch.testing.assert_close(torch.from_numpy(chunked), torch.from_numpy(whole), atol=1e-6, rtol=0)
