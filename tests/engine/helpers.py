from timesformer.engine.config import DataConfig, OptimConfig, RunConfig

TINY = dict(image_size=16, patch_size=4, dim=32, depth=1, heads=2, dim_head=16)


def tiny_run(out, name="run", *, model_args=None, data=None, optim=None, **top) -> RunConfig:
    return RunConfig(
        name=name, out=str(out), model="timesformer_tiny", model_args={**TINY, **(model_args or {})},
        data=DataConfig(**{**dict(kind="synthetic", synthetic_train=64, synthetic_val=24, synthetic_size=16),
                           **(data or {})}),
        optim=OptimConfig(**{**dict(batch_size=16, epochs=2, precision="fp32", warmup_steps=2, log_every=1, lr=1e-3),
                             **(optim or {})}), **top)
