"""The replicated baseline's optimizer is the fused row-wise Adagrad of the sharded table."""

import pytest
import torch
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from research.replicated import SparseRowWiseAdagrad


def test_sparse_rowwise_adagrad_matches_torchrec_rowwise_adagrad_on_the_touched_rows():
    torch.manual_seed(0)
    start = torch.randn(50, 8)
    sparse = torch.nn.Embedding(50, 8, sparse=True, _weight=start.clone())
    dense = torch.nn.Parameter(start.clone())
    sparse_opt = SparseRowWiseAdagrad([sparse.weight], lr=0.1)
    dense_opt = RowWiseAdagrad([dense], lr=0.1, eps=1e-8)
    for step in range(4):
        ids = torch.randint(0, 50, (30,), generator=torch.Generator().manual_seed(step))  # repeats included
        upstream = torch.randn(30, 8, generator=torch.Generator().manual_seed(100 + step))
        (sparse(ids) * upstream).sum().backward()
        (dense[ids] * upstream).sum().backward()
        sparse_opt.step()
        dense_opt.step()
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
    # torchrec's dense version also decays untouched rows' steps by nothing (their gradient is 0), so both agree.
    assert torch.allclose(sparse.weight, dense, atol=1e-6)
    untouched = torch.ones(50, dtype=torch.bool)
    for step in range(4):
        untouched[torch.randint(0, 50, (30,), generator=torch.Generator().manual_seed(step))] = False
    assert torch.equal(sparse.weight[untouched], start[untouched])


def test_sparse_rowwise_adagrad_refuses_a_dense_gradient():
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    weight.grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match="needs sparse gradients"):
        SparseRowWiseAdagrad([weight], lr=0.1).step()
