"""The Hub on the command line: the `push` command, and `train --push-to-hub`.

`add_push_command` adds `push` to the command line's sub-parsers, `add_train_push_arguments` the
flags of `train` (not `TrainConfig` settings: a token must never be written into a run's
settings, and where a module is published is no part of how it trains); `prepare_push` checks
them and creates the repository before training (as diffusers' examples do, so that a missing
login fails at once, not after hours), and `push_trained` uploads the final module.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UsageError

__all__ = ["add_push_command", "add_train_push_arguments", "prepare_push", "push_trained"]


def _add_hub_flags(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument(f"--{prefix}token", default=None, help="a Hub token with write access (default: the saved login, "
                   "`hf auth login`, or $HF_TOKEN)")
    p.add_argument(f"--{prefix}private", action="store_true", help="make a new repository private")


def _push(args: argparse.Namespace) -> None:
    from .push import push_to_hub

    url = push_to_hub(args.model, args.repo_id, token=args.token, private=args.private or None, license=args.license)
    print(f"Pushed {args.model} to {url}")


def add_push_command(commands: argparse._SubParsersAction) -> None:
    """`push --model FOLDER --repo-id USER/NAME`: upload a trained module with its model card."""
    p = commands.add_parser("push", help="upload a trained control module to the Hugging Face Hub, with a model card")
    p.add_argument("--model", required=True, help="the module folder written by training (e.g. runs/run1/final)")
    p.add_argument("--repo-id", required=True, help="USER/NAME on the Hub (NAME alone: under your account)")
    _add_hub_flags(p, "")
    p.add_argument("--license", default=None, help="the card's license (default: the base's, creativeml-openrail-m "
                   "for SD1.5; else other)")
    p.set_defaults(func=_push)


def add_train_push_arguments(p: argparse.ArgumentParser) -> None:
    """`--push-to-hub`, `--hub-model-id`, `--hub-token`, `--hub-private` on `train`."""
    p.add_argument("--push-to-hub", action="store_true", help="upload the final module with its model card")
    p.add_argument("--hub-model-id", default=None, help="USER/NAME for --push-to-hub (default: the --output folder's "
                   "name, under your account)")
    _add_hub_flags(p, "hub-")


def prepare_push(args: argparse.Namespace, output: str) -> str | None:
    """The repository `train --push-to-hub` pushes to, created now; None without `--push-to-hub`."""
    if not args.push_to_hub:
        given = [flag for flag, value in (("--hub-model-id", args.hub_model_id), ("--hub-token", args.hub_token),
                                         ("--hub-private", args.hub_private)) if value]
        if given:
            raise UsageError(f"{' and '.join(given)} only apply with --push-to-hub.")
        return None
    from .push import create_repo

    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch`, the main process alone pushes
        return None
    return create_repo(args.hub_model_id or Path(output).name, token=args.hub_token,
                       private=args.hub_private or None, flag="--hub-model-id")


def push_trained(args: argparse.Namespace, repo_id: str | None, final: Path) -> None:
    """Upload the final module of a run to `repo_id` (made by `prepare_push`)."""
    if repo_id is None:
        return
    from .push import push_to_hub

    try:
        url = push_to_hub(final, repo_id, token=args.hub_token, create=False)
    except UsageError as error:  # the run itself is done: say how to push it again
        raise UsageError(f"{str(error).rstrip('.')}. Training is done; push its module again with `python -m "
                         f"lite_controlnet push --model {final} --repo-id {repo_id}`.") from None
    print(f"Pushed {final} to {url}")
