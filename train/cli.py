"""Command-line entry points of the training stage: ``eoforge pretrain`` and ``eoforge export``.

Gathered by the root ``eoforge`` group; also runnable on their own (before that, or under
torchrun without the console script)::

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m eoforge.train.cli pretrain --data demo/ds --method pera --out demo/run-pera
"""

from __future__ import annotations

from typing import Any

import click


class MethodName(click.Choice):
    """A registered pretraining method (:data:`eoforge.train.methods.METHODS`). The registry is
    read when a value or the help needs it, so ``eoforge`` starts without importing torch."""

    def __init__(self) -> None:
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from eoforge.train.methods import METHODS

        return tuple(METHODS)

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns; the registry is the source
        pass


@click.command("pretrain")
@click.option("--data", required=True, metavar="DS",
              help="Dataset folder (shards + manifest.parquet + stats.json) to pretrain on.")
@click.option("--method", required=True, type=MethodName(), help="Pretraining method (the registry's names).")
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="RUN",
              help="Run folder: config.yaml, metrics.jsonl, checkpoints/, loss.png.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="YAML recipe (train/recipes/); the options below override it. "
                   "With --resume and no --config, RUN/config.yaml is used.")
@click.option("--model", metavar="NAME", help="timm backbone (vit_small_patch16_224, vit_base_patch16_224, ...).")
@click.option("--steps", type=click.IntRange(min=1),
              help="Optimiser steps of the whole run (an epoch is a step count).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per step per process.")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes per process.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), help="Where to train [auto].")
@click.option("--resume", is_flag=True,
              help="Continue from RUN/checkpoints/latest (starts fresh when there is none).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Any other config value, e.g. --set engine.checkpoint_every=100 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pretrain(data: str, method: str, out: str, config_file: str | None, model: str | None, steps: int | None,
             batch_size: int | None, workers: int | None, device: str | None, resume: bool,
             sets: tuple[str, ...], quiet: bool) -> None:
    """Self-supervised pretraining of a timm backbone on the shards of a dataset.

    One process per GPU (or CPU process) under torchrun; alone it is a single-process run.
    Every process takes exactly --steps steps over its own shards; checkpoints every
    engine.checkpoint_every steps make --resume continue bit-exactly (deterministic mode).

    \b
    Example:
        eoforge pretrain --data demo/ds --method pera --out demo/run-pera \\
            --config train/recipes/pera-tiny-demo.yaml
        torchrun --standalone --nproc-per-node 8 -m eoforge.cli pretrain \\
            --data /data/ds --method pera --out runs/pera-vits \\
            --config train/recipes/pera-vit-small.yaml --resume
    """
    from eoforge.shards.config import ConfigError
    from eoforge.train.config import pretrain_config
    from eoforge.train.distributed import DeviceUnavailableError
    from eoforge.train.engine import train

    try:
        cfg = pretrain_config(config_file, method=method, run=out if resume else None, model=model, steps=steps,
                              batch_size=batch_size, workers=workers, device=device, sets=sets,
                              progress=False if quiet else None)
    except ConfigError as err:
        raise click.UsageError(str(err)) from err
    try:
        result = train(cfg, data, out, resume=resume)
    except (FileExistsError, FileNotFoundError, DeviceUnavailableError, ValueError) as err:
        # what the user can fix (no data set / stats.json, too few shards, a run that exists,
        # no GPU, a bad value): the message, exit status 1; anything else keeps its traceback
        raise click.ClickException(str(err)) from err
    if result.is_main:
        m = result.last_metrics
        figures = ", ".join(f"{k} {m[k]:.4g}" for k in ("loss", "embed_std_norm", "embed_mean_cos")
                            if isinstance(m.get(k), (int, float)))
        click.echo(f"{cfg.method_name}: {result.steps} steps (from {result.start_step}) -> {result.run}; {figures}")
        click.echo(f"checkpoint: {result.checkpoint}; metrics: {result.run / 'metrics.jsonl'}")


@click.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="MODEL.safetensors",
              help="Weights to write; the metadata goes to MODEL.json beside them.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="A specific checkpoint of RUN [RUN/checkpoints/latest].")
@click.option("--branch", metavar="NAME",
              help="Encoder of a several-encoder method: dualenc s2 (default) or s1.")
def export(run: str, out: str, checkpoint: str | None, branch: str | None) -> None:
    """Export the backbone of training run RUN as a timm state dict (safetensors) + MODEL.json.

    PerA exports its EMA teacher, SoftCon its online encoder, the dual encoder its S2 encoder
    (--branch s1: the S1 encoder). MODEL.json names the timm model and its create_model
    arguments, the input bands and the normalisation of that encoder, the method, the full
    config and the sha256 of the dataset's manifest.parquet. Beside it: MODEL.stac.json (the
    STAC MLM item) and MODEL.terratorch.yaml (the backbone block of a TerraTorch config:
    timm name and arguments, the weights file, band order, means and stds).

    \b
    Examples:
        eoforge export demo/run-pera --out demo/pera-vitp.safetensors
        eoforge export demo/run-dualenc --out demo/dualenc-s1.safetensors --branch s1
        python -c "from eoforge.train.model_format import load_backbone;
                   net, info = load_backbone('demo/pera-vitp.safetensors')"
    """
    from eoforge.train.export import export_run

    try:
        result = export_run(run, out, checkpoint=checkpoint, branch=branch)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    which = ""
    if len(result.branches) > 1:
        others = ", ".join(b for b in result.branches if b != result.branch)
        which = f" the {result.branch} branch ({'the default; ' if branch is None else ''}--branch {others} for the other),"
    click.echo(f"wrote {result.weights}:{which} {result.num_tensors} tensors, {result.num_params / 1e6:.2f} M weights, "
               f"from {result.checkpoint.name}")
    click.echo(f"metadata: {result.meta}")
    from eoforge.train.mlm_item import stac_item_path
    from eoforge.train.terratorch_block import terratorch_block_path

    click.echo(f"STAC MLM item: {stac_item_path(result.weights)}; TerraTorch block: "
               f"{terratorch_block_path(result.weights)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Training commands (also available as `eoforge pretrain` / `eoforge export`)."""


main.add_command(pretrain)
main.add_command(export)

if __name__ == "__main__":  # pragma: no cover
    main()
