"""torch.compile works on the model."""

import pytest
import torch

from ..conftest import small_model


def test_compile_eager_backend():
    model = small_model()
    compiled = torch.compile(model, backend="eager")
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(video), model(video))


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["divided", "sparse"])
def test_compile_inductor(scheme):
    model = small_model(attention=scheme)
    compiled = torch.compile(model)
    video = torch.randn(2, 4, 3, 32, 32)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    with torch.no_grad():
        torch.testing.assert_close(compiled(video, mask), model(video, mask), atol=1e-4, rtol=1e-4)


SPARSE_BREAKS = pytest.mark.xfail(
    strict=True, reason="sparse builds its group index tables (torch.unique, .item) inside the forward"
)


@pytest.mark.parametrize("scheme", ["space", "joint", "divided", pytest.param("sparse", marks=SPARSE_BREAKS), "axial"])
def test_the_forward_is_one_graph(scheme):
    """No graph break: a break splits a compiled model into pieces with Python between them, which on a GPU means
    a launch (or a CUDA-graph replay) per piece -- what a batch-1 forward is bound by."""
    model = small_model(attention=scheme).eval()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(torch.randn(1, 4, 3, 32, 32))
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0 and explained.graph_count == 1, reasons
