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
