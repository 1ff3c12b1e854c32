"""The `eoforge` command: a tiny root that gathers the commands defined beside their code."""

from __future__ import annotations

import click

from eoforge import __version__
from eoforge.eval.cli import adapt, compare_cmd, embed_cmd, eval_cmd
from eoforge.ingest.cli import demo_data, ingest
from eoforge.ingest.synth_cli import synth_catalog
from eoforge.shards.cli import shards
from eoforge.train.cli import export, pretrain


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="eoforge")
def main() -> None:
    """Sentinel-1/2 foundation-model datasets: ingest -> shards -> pretrain -> eval."""


main.add_command(demo_data)
main.add_command(ingest)
main.add_command(synth_catalog)
main.add_command(shards)
main.add_command(pretrain)
main.add_command(export)
main.add_command(eval_cmd)
main.add_command(embed_cmd)
main.add_command(adapt)
main.add_command(compare_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
