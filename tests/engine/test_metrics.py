import torch

from timesformer.engine.metrics import (
    confusion_matrix,
    direction_accuracy,
    mean_average_precision,
    per_class_accuracy,
    topk_accuracy,
)
from timesformer.engine.optim import lr_at, param_groups


def test_accuracy_confusion_and_direction():
    logits = torch.tensor([[3.0, 1, 0], [2.5, 2, 3], [1, 0, 2], [0, 5, 1]])
    labels = torch.tensor([0, 1, 2, 1])
    assert topk_accuracy(logits, labels, 1) == 0.75 and topk_accuracy(logits, labels, 2) == 0.75
    assert topk_accuracy(logits, labels, 3) == 1.0 and topk_accuracy(logits, labels, 5) == 1.0  # k capped
    cm = confusion_matrix(logits.argmax(1), labels, 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert per_class_accuracy(cm) == [1.0, 0.5, 1.0]
    assert abs(direction_accuracy(logits, labels, [(0, 1)]) - 2 / 3) < 1e-6  # rows 0 and 3 win, row 1 loses


def test_map():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.6]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]])
    # class 0: ranks 1 (hit), 2, 3 (hit) -> AP = (1 + 2/3) / 2; class 1: ranks 1 (hit), 2 (hit) -> AP 1
    assert abs(mean_average_precision(scores, targets) - ((1 + 2 / 3) / 2 + 1) / 2) < 1e-6


def test_schedule_and_decay_groups():
    assert lr_at(0, base=1.0, total=100, warmup=10) == 0.1
    assert lr_at(9, base=1.0, total=100, warmup=10) == 1.0
    assert abs(lr_at(55, base=1.0, total=100, warmup=10, min_lr=0.0) - 0.5) < 1e-9
    assert lr_at(100, base=1.0, total=100, warmup=10, min_lr=0.1) == 0.1
    assert lr_at(50, base=1.0, total=100, warmup=10, schedule="constant") == 1.0
    from ..conftest import small_model

    decay, no_decay = param_groups(small_model(), 0.05)
    names = {id(p): n for n, p in small_model().named_parameters()}
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"])
    assert len(no_decay["params"]) > 0 and no_decay["weight_decay"] == 0.0
    del names
