"""mnist_sae.forked.map_forked: results in order, from closures, the same as in one process."""

import os

import pytest
import torch

from mnist_sae.forked import cpu_workers, map_forked


@pytest.fixture(autouse=True)
def one_thread():
    """The stages that fork run one thread (map_forked forks only then)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_map_forked_runs_closures_in_other_processes_in_order():
    parent = os.getpid()
    big = torch.arange(100_000.0)  # inherited by the workers, not pickled

    def job(i):
        return i, float(big[i * 1000:(i + 1) * 1000].sum()), os.getpid()

    out = map_forked(job, range(6), workers=2)
    assert [(i, s) for i, s, _ in out] == [(i, float(big[i * 1000:(i + 1) * 1000].sum())) for i in range(6)]
    assert all(pid != parent for _, _, pid in out)
    assert [pid for _, _, pid in map_forked(job, range(3), workers=1)] == [parent] * 3


def test_map_forked_training_bits_do_not_depend_on_workers():
    def train(seed):
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(16, 8, generator=gen, requires_grad=True)
        opt = torch.optim.Adam([w], lr=1e-2, fused=True)
        x = torch.randn(64, 16, generator=gen)
        for _ in range(20):
            opt.zero_grad()
            (x @ w).tanh().square().mean().backward()
            opt.step()
        return w.detach()

    forked, inline = map_forked(train, [0, 1, 2], workers=2), map_forked(train, [0, 1, 2], workers=1)
    assert all(torch.equal(a, b) for a, b in zip(forked, inline))


def test_map_forked_reraises_a_workers_error():
    def job(i):
        if i == 2:
            raise ValueError(f"bad item {i}")
        return i

    with pytest.raises(ValueError, match="bad item 2"):
        map_forked(job, range(4), workers=2)
    assert map_forked(job, [0, 1], workers=2) == [0, 1]  # the module's state was cleared
    assert cpu_workers() >= 1 and cpu_workers("cuda") == 1


def test_map_forked_stays_in_process_when_torch_runs_threads():
    torch.set_num_threads(2)  # OpenMP's team does not survive a fork: the jobs run here
    assert [pid for pid in map_forked(lambda i: os.getpid(), range(3), workers=2)] == [os.getpid()] * 3


def test_save_figures_png_bytes_do_not_depend_on_workers(tmp_path):
    """stages._common.save_figures draws each figure in a forked worker: the same PNG bytes as
    drawn one after the other in this process, every file written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages._common import save_figures

    def figure(seed):
        values = torch.randn(500, generator=torch.Generator().manual_seed(seed)).numpy()
        fig, axes = plt.subplots(1, 2, figsize=(4, 2))
        axes[0].hist(values, bins=20)
        axes[1].plot(values[:50], "o-")
        fig.tight_layout()
        return fig

    for workers in (1, 2):
        (tmp_path / str(workers)).mkdir()
        save_figures([(tmp_path / str(workers) / f"{s}.png", lambda s=s: figure(s)) for s in range(3)], workers)
    for s in range(3):
        assert (tmp_path / "2" / f"{s}.png").read_bytes() == (tmp_path / "1" / f"{s}.png").read_bytes()
    assert sorted(p.name for p in (tmp_path / "2").iterdir()) == ["0.png", "1.png", "2.png"]
