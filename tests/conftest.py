import pytest
import torch

import timesformer as tf

SCHEMES = tf.ATTENTIONS
POS = ("learned", "rotary")  # learned_joint (the seed's table) is tested in tests/convert


def small_config(**overrides) -> tf.TimeSformerConfig:
    """A model small enough for exact fp32 checks in milliseconds (T=4, 32x32, patch 8 -> 4x4 grid)."""
    base = dict(num_classes=5, num_frames=4, image_size=32, patch_size=8, dim=32, depth=2, heads=2, dim_head=16)
    return tf.TimeSformerConfig(**{**base, **overrides})


def small_model(seed: int = 0, **overrides) -> tf.TimeSformer:
    """Random-init small model with every parameter non-trivial (temporal_fc and time table are zero at init,
    which would hide bugs in the temporal path)."""
    torch.manual_seed(seed)
    model = tf.TimeSformer(small_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_fc" in name or "time_embed" in name:
                p.normal_(std=0.1)
    return model


TINY = dict(image_size=32, patch_size=8, dim=32, depth=2, heads=2, dim_head=16, num_frames=4)  # 4 x 32 x 32 clips


def labelled_tiny_model() -> tf.TimeSformer:
    """The tiny preset at 4 x 32 x 32 with three named classes (cat, dog, eel), random init, in eval mode."""
    torch.manual_seed(0)
    return tf.create_model("timesformer_tiny", num_classes=3, labels=("cat", "dog", "eel"), **TINY).eval()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def trained_motion():
    """A model that learned four SyntheticMotion classes, 480 held-out clips, and 8 training clips to calibrate on."""
    from torch.utils.data import DataLoader

    from timesformer.data import SyntheticMotion, collate

    classes = ("move_left", "move_up", "still_disc", "still_cross")
    torch.manual_seed(0)
    model = tf.create_model("timesformer_tiny", dim=64, depth=2, heads=2, dim_head=32, num_classes=4)
    train = SyntheticMotion(40 * 32, classes=classes, seed=1, mean=model.config.mean, std=model.config.std)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for batch in DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate):
        torch.nn.functional.cross_entropy(model(batch["video"]), batch["label"]).backward()
        opt.step()
        opt.zero_grad()
    test = SyntheticMotion(480, classes=classes, split="test", mean=model.config.mean, std=model.config.std)
    return model.eval(), test, collate([train[i] for i in range(8)])["video"]
