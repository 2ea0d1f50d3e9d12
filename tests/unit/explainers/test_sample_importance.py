"""The sample-importance explainers end to end: TracIn against an independent
checkpoint loop, neighbours against brute-force distances, outlier flags,
relative ranking, disclosure of rows, aggregates, persistence and errors, on
eager modules and on modules round-tripped through torch.export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from desiderata.explainers import registry
from desiderata.explainers.base import ExplainContext, Kind
from desiderata.explainers.influence import explain_samples, get_index, precompute
from desiderata.explainers.influence_config import InfluenceConfig, load_influence_config
from desiderata.explainers.influence_index import load_or_build_index, robust_threshold
from desiderata.explainers.types import SampleImportanceParams, SampleImportanceResult
from desiderata.server.errors import FailedPrecondition
from tests.unit.explainers._credit import FakeModel, credit, export_roundtrip, mlp, reference

N = 300


@pytest.fixture(scope="module")
def tracin_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[FakeModel, list[tuple[Path, float]]]:
    """An MLP trained ONE epoch by SGD (batch 30, lr 0.1) with a checkpoint every 2 steps."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tracin")
    data = credit()
    x, y = data.x[:N], data.y[:N]
    module = mlp(x.shape[1], hidden=8, seed=3)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    checkpoints = []
    for step, start in enumerate(range(0, N, 30)):
        if step % 2 == 0:
            path = folder / f"ck{step}.pt"
            torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, path)
            checkpoints.append((path, 0.1))
        xb, yb = (
            torch.as_tensor(x[start : start + 30], dtype=torch.float32),
            torch.as_tensor(y[start : start + 30]),
        )
        opt.zero_grad()
        (-torch.log(module(xb).gather(1, yb[:, None])).mean()).backward()
        opt.step()
    cfg = {"checkpoints": [{"path": p.name, "learning_rate": lr} for p, lr in checkpoints]}
    (folder / "influence.yaml").write_text(yaml.safe_dump(cfg))
    served = export_roundtrip(module, x.shape[1], folder)
    return FakeModel(served, reference(x, y), data.card, model_dir=folder), checkpoints


def _oracle_tracin(
    x: np.ndarray, y: int, ref_x: np.ndarray, ref_y: np.ndarray, cks: list, subset: str
) -> np.ndarray:
    """Σ_c η_c ∇L(θ_c, x)·∇L(θ_c, z) with plain autograd, one example at a time."""
    out = np.zeros(len(ref_x))
    for path, lr in cks:
        net = mlp(ref_x.shape[1], hidden=8)
        net.load_state_dict(torch.load(path, weights_only=True))
        net.double()
        params = list(net.parameters())[-2:] if subset == "last_layer" else list(net.parameters())

        def grad_of(
            row: np.ndarray, label: int, net: torch.nn.Module = net, params: list = params
        ) -> torch.Tensor:
            p = net(torch.as_tensor(row[None], dtype=torch.float64))[0, label]
            return torch.cat([g.reshape(-1) for g in torch.autograd.grad(-torch.log(p), params)])

        gx = grad_of(x, y)
        out += lr * np.array([float(gx @ grad_of(r, int(t))) for r, t in zip(ref_x, ref_y, strict=True)])
    return out


@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_tracin_matches_an_independent_checkpoint_loop(tracin_model: tuple, subset: str) -> None:
    model, cks = tracin_model
    ref = model.reference()
    x = credit().x[N + 5]
    predicted = int(np.argmax(model.predict_proba(x[None])[0]))
    params = SampleImportanceParams(method="tracin", top_k=100, parameter_subset=subset)
    exp = explain_samples(model, x, params, ExplainContext(), "tracin")
    oracle = _oracle_tracin(x, predicted, ref.x, ref.y, cks, subset)
    assert isinstance(exp.result, SampleImportanceResult)
    got = {s.sample_id: s.influence for s in exp.result.samples}
    expected_top = [ref.ids[i] for i in np.argsort(-oracle)[:100]]
    assert list(got) == expected_top
    np.testing.assert_allclose(
        [got[i] for i in expected_top], np.sort(oracle)[::-1][:100], rtol=1e-4, atol=1e-7
    )


def test_nearest_neighbours_match_brute_force_on_the_penultimate_layer(tracin_model: tuple) -> None:
    model, _ = tracin_model
    ref = model.reference()
    x = credit().x[N + 7]
    net = mlp(ref.x.shape[1], hidden=8)
    net.load_state_dict({k: v for k, v in model.module.state_dict().items()})
    body = net[:4]  # everything before the last Linear
    with torch.no_grad():
        h_ref = body(torch.as_tensor(ref.x, dtype=torch.float32)).double().numpy()
        h_x = body(torch.as_tensor(x[None], dtype=torch.float32)).double().numpy()
    dist = np.linalg.norm(h_ref - h_x, axis=1)
    exp = explain_samples(model, x, SampleImportanceParams(top_k=10), ExplainContext(), "nearest_neighbours")
    assert [s.sample_id for s in exp.result.samples] == [ref.ids[i] for i in np.argsort(dist)[:10]]
    np.testing.assert_allclose([-s.influence for s in exp.result.samples], np.sort(dist)[:10], atol=1e-4)


def test_outliers_relative_ranking_rows_and_aggregate(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = credit()
    x, y = data.raw_x[:N].copy(), data.y[:N].copy()
    # a mislabelled extreme applicant: the textbook high-self-influence outlier
    x[0, :9] = data.raw_x[:, :9].max(0) * 3
    y[0] = 1 - y[0]
    module = torch.nn.Sequential(_Standardise(data.mean, data.std), *list(mlp(x.shape[1], 8, seed=5)))
    from tests.unit.explainers._credit import train_full_batch

    train_full_batch(module, x, y, l2=1e-3, steps=60)
    (tmp_path / "influence.yaml").write_text("outlier_mad_k: 3.5\n")
    model = FakeModel(module, reference(x, y), data.card, model_dir=tmp_path)
    query = data.raw_x[N + 11]
    base = explain_samples(model, query, SampleImportanceParams(top_k=100), ExplainContext(), "influence")
    index_files = list((tmp_path / ".influence").glob("*.npz"))
    assert len(index_files) == 1
    samples = base.result.samples
    assert all(s.row is None for s in samples) and base.parameters["rows_included"] is False
    self_inf = np.array([s.self_influence for s in samples])
    # the flag is the robust cut, recomputed here from every training point's self-influence
    idx = load_or_build_index(
        module,
        model.ref,
        "influence",
        "last_layer",
        InfluenceConfig(outlier_mad_k=3.5),
        tmp_path / ".influence",
    )
    roots = np.cbrt(idx.self_influence)
    cut = (np.median(roots) + 3.5 * 1.4826 * np.median(np.abs(roots - np.median(roots)))) ** 3
    assert cut == pytest.approx(robust_threshold(idx.self_influence, 3.5))
    assert [s.outlier for s in samples] == list(self_inf > cut)
    # the cut flags a tail (wide on this briefly trained model: many rows are still misfit)
    # and the mislabelled extreme point is in it
    assert 0 < idx.outliers.mean() < 0.25
    assert idx.outliers[0]

    kept = explain_samples(
        model, query, SampleImportanceParams(top_k=100, exclude_outliers=True), ExplainContext(), "influence"
    )
    assert not any(s.outlier for s in kept.result.samples)
    assert len(kept.result.samples) == 100

    rel = explain_samples(
        model, query, SampleImportanceParams(top_k=10, relative=True), ExplainContext(), "influence"
    )
    r = np.array([s.relative_influence for s in rel.result.samples])
    assert np.all(np.diff(r) <= 0)
    for s in rel.result.samples:
        i = model.ref.ids.index(s.sample_id)
        assert s.relative_influence == pytest.approx(s.influence / idx.global_mean_abs[i])

    rows = explain_samples(
        model, query, SampleImportanceParams(top_k=10), ExplainContext(), "influence", include_rows=True
    )
    first = rows.result.samples[0]
    i = model.ref.ids.index(first.sample_id)
    assert first.row == model.schema.decode(x[i]) and first.row["Income"] == pytest.approx(x[i, 4])
    top10 = [model.ref.ids.index(s.sample_id) for s in rows.result.samples]
    share = round(100 * float(np.mean(y[top10] == 1)))
    income = float(np.median(x[top10, 4]))
    assert rows.result.aggregate.startswith(f"The 10 most influential past cases were {share}% good")
    assert "median income €" in rows.result.aggregate
    assert rows.result.aggregate.split("median income €")[1].startswith(f"{float(f'{income:.3g}'):,.0f}")

    page = explain_samples(
        model, query, SampleImportanceParams(top_k=10, page_size=4), ExplainContext(), "influence"
    )
    assert page.result.next_page_token == "4"
    nxt = explain_samples(
        model,
        query,
        SampleImportanceParams(top_k=10, page_size=4, page_token="4"),
        ExplainContext(),
        "influence",
    )
    assert [s.sample_id for s in nxt.result.samples] == [s.sample_id for s in rows.result.samples[4:8]]


class _Standardise(torch.nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def test_persisted_index_is_reused_without_recomputation(tmp_path: Path) -> None:
    data = credit()
    module = mlp(data.x.shape[1], 8, seed=2)
    ref = reference(data.x[:200], data.y[:200])
    calls: list[str] = []
    first = load_or_build_index(
        module, ref, "influence", "all", InfluenceConfig(), tmp_path, progress=lambda s, d, t: calls.append(s)
    )
    assert calls
    calls.clear()
    second = load_or_build_index(
        module, ref, "influence", "all", InfluenceConfig(), tmp_path, progress=lambda s, d, t: calls.append(s)
    )
    assert calls == []
    np.testing.assert_array_equal(first.train, second.train)
    np.testing.assert_array_equal(first.global_mean_abs, second.global_mean_abs)
    q = data.x[300:302]
    np.testing.assert_allclose(
        first.scores(first.query_vectors(module, q, data.y[300:302])),
        second.scores(second.query_vectors(module, q, data.y[300:302])),
    )


def test_errors_name_what_is_missing() -> None:
    data = credit()
    module = mlp(data.x.shape[1], 8)
    x = data.x[0]
    no_ref = FakeModel(module, None, data.card)
    with pytest.raises(FailedPrecondition, match="training reference"):
        explain_samples(no_ref, x, SampleImportanceParams(), ExplainContext(), "influence")
    hinge = FakeModel(
        module, reference(data.x[:50], data.y[:50]), data.card.model_copy(update={"loss": "hinge"})
    )
    with pytest.raises(FailedPrecondition, match="loss 'hinge'"):
        explain_samples(hinge, x, SampleImportanceParams(), ExplainContext(), "influence")
    no_ck = FakeModel(module, reference(data.x[:50], data.y[:50]), data.card)
    with pytest.raises(FailedPrecondition, match="checkpoints"):
        explain_samples(no_ck, x, SampleImportanceParams(), ExplainContext(), "tracin")


def test_registered_under_the_wire_names() -> None:
    assert registry.names(Kind.SAMPLE_IMPORTANCE) == ["influence", "nearest_neighbours", "tracin"]
    assert registry.default_method(Kind.SAMPLE_IMPORTANCE) == "influence"


def test_precompute_builds_the_listed_subsets_and_settings_are_read_once(tmp_path: Path) -> None:
    data = credit()
    module = mlp(data.x.shape[1], 8, seed=4)
    (tmp_path / "influence.yaml").write_text(yaml.safe_dump({"precompute_subsets": ["all", "last_layer"]}))
    model = FakeModel(module, reference(data.x[:120], data.y[:120]), data.card, model_dir=tmp_path)
    built = precompute(model, ("influence", "nearest_neighbours"))
    assert sorted(built) == ["influence", "influence/all", "nearest_neighbours"]
    assert built["influence"].subset == "last_layer" and built["influence/all"].subset == "all"
    assert get_index(model, "influence", "all") is built["influence/all"]  # a request finds it built
    assert {p.name.split("-")[1] for p in (tmp_path / ".influence").glob("influence-*.npz")} == {"last_layer", "all"}
    first = load_influence_config(tmp_path)
    assert load_influence_config(tmp_path) is first  # unchanged file: not parsed again
    # which subsets are built at load changes no index, so it is not part of the settings digest
    assert first.digest() == InfluenceConfig().digest()
    (tmp_path / "influence.yaml").write_text(yaml.safe_dump({"damping": 0.5, "precompute_subsets": ["all"]}))
    assert load_influence_config(tmp_path).damping == 0.5  # a changed file is read again
