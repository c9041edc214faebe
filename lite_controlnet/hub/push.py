"""Upload a trained control module to the Hugging Face Hub, with its model card.

    push_to_hub("runs/run1/final", "user/fill50k-lite")

creates the repository if needed (`HfApi.create_repo(exist_ok=True)`) and uploads, in one commit
(`HfApi.upload_folder`), the module's files as training saved them (config.json, the safetensors
weights and MANIFEST.json, so that a downloaded copy is verified as a local one), the model card
as README.md (`model_card.py`) and the run's newest epoch grid. Nothing is written into the
module folder: the upload is staged in a temporary folder.

Every expected failure is one line: a folder that is no module (what it lacks is named), a damaged
one (a file that differs from its manifest), a malformed repository id, no token, the Hub offline
or out of reach.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import UsageError

__all__ = ["check_module_folder", "create_repo", "push_to_hub"]

T = TypeVar("T")
_LOGIN = "run `hf auth login` (`huggingface-cli login` with older huggingface_hub) or pass --token"
_WEIGHTS = "diffusion_pytorch_model.safetensors"


def check_module_folder(folder: str | Path, flag: str = "--model") -> Path:
    """`folder` if it holds a control module that loads and whose files match its manifest; else a
    one-line error that names what is missing or damaged."""
    from ..training.checkpoint import verify_module_folder

    folder = Path(folder)
    expected = "expected a folder written by training (e.g. runs/run1/final)"
    if not folder.is_dir():
        raise UsageError(f"{flag} {folder} is not a folder; {expected}.")
    missing = [name for name in ("config.json", _WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"{flag} {folder} is not a control module folder: it has no {' and no '.join(missing)}; "
                         f"{expected}.")
    verify_module_folder(folder)  # DamagedFolderError: a file differs from the manifest
    from ..controls import load_control

    try:
        load_control(folder)  # before anything is sent: config and weights must load
    except (OSError, ValueError) as error:
        raise UsageError(f"{flag} {folder}: {error}") from None
    return folder


def _check_repo_id(repo_id: str, flag: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        if not repo_id.strip() or repo_id.count("/") > 1:
            raise HFValidationError("more than one '/'")
    except HFValidationError:
        raise UsageError(f"{flag} {repo_id!r} is not a Hub repository id: expected USER/NAME (or NAME, under your "
                         "account): letters, digits, '-', '_' and '.', at most 96 characters, no '--' or '..'.") \
            from None


def _hub(call: Callable[[], T], repo_id: str) -> T:
    """`call()`, with the Hub's errors as one line that says what to do."""
    from huggingface_hub import errors

    try:
        return call()
    except errors.OfflineModeIsEnabled:
        raise UsageError(f"Cannot push to {repo_id}: the Hub is offline here (HF_HUB_OFFLINE=1); unset "
                         "HF_HUB_OFFLINE where there is internet, then push again.") from None
    except errors.LocalTokenNotFoundError:
        raise UsageError(f"Cannot push to {repo_id}: not logged in to the Hugging Face Hub; {_LOGIN}.") from None
    except errors.HFValidationError as error:
        raise UsageError(f"Cannot push to {repo_id}: {error}") from None
    except errors.HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        if status == 401:
            raise UsageError(f"Cannot push to {repo_id}: the Hub refused the token (401); {_LOGIN} with a token "
                             "that may write.") from None
        if status == 403:
            raise UsageError(f"Cannot push to {repo_id}: this token may not write there (403: {first}); use a "
                             "repository of your own account or a token with write access.") from None
        raise UsageError(f"Cannot push to {repo_id}: the Hub answered {status} ({first}).") from None
    except errors.HTTPError as error:  # no connection at all
        raise UsageError(f"Cannot push to {repo_id}: the Hub cannot be reached ({type(error).__name__}: {error}); "
                         "check the internet connection.") from None


def create_repo(repo_id: str, token: str | None = None, private: bool | None = None, flag: str = "--repo-id") -> str:
    """Create the model repository `repo_id` if it is not there yet; returns its full id (user/name).

    Checked before anything is sent: the id's form, offline mode and that there is a token.

    Args:
        repo_id: USER/NAME, or NAME (under the logged-in account).
        token: a Hub token with write access; default: the one `hf auth login` saved (or $HF_TOKEN).
        private: make a new repository private (None: the Hub's default, public).
        flag: how the user gave `repo_id`, for the messages.
    """
    import huggingface_hub as hub
    from huggingface_hub import constants

    _check_repo_id(repo_id, flag)
    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"Cannot push to {repo_id}: the Hub is offline here (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE "
                         "where there is internet, then push again.")
    if token is None and hub.get_token() is None:
        raise UsageError(f"Cannot push to {repo_id}: not logged in to the Hugging Face Hub; {_LOGIN}.")
    api = hub.HfApi(token=token)
    url = _hub(lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"), repo_id)
    return getattr(url, "repo_id", None) or repo_id


def push_to_hub(model: str | Path, repo_id: str, token: str | None = None, private: bool | None = None,
                license: str | None = None, commit_message: str | None = None, create: bool = True) -> str:
    """Upload the control module in `model` with its model card; returns the repository's URL.

    Args:
        model: a module folder written by training (e.g. runs/run1/final).
        repo_id: USER/NAME, or NAME (under the logged-in account).
        token: a Hub token with write access; default: the saved login.
        private: make a new repository private.
        license: the card's license (see `model_card`).
        commit_message: the commit's message on the Hub.
        create: create the repository first (False: `create_repo` was called already).
    """
    import huggingface_hub as hub

    from .model_card import model_card

    folder = check_module_folder(model)
    if create:
        repo_id = create_repo(repo_id, token=token, private=private)
    card = model_card(folder, repo_id, license=license)
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="lite-controlnet-push-") as staging:
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, Path(staging) / path.name)
        card.card.save(Path(staging) / "README.md")
        for name, path in card.files.items():
            shutil.copy2(path, Path(staging) / name)
        _hub(lambda: api.upload_folder(repo_id=repo_id, folder_path=staging, repo_type="model",
                                       commit_message=commit_message or "Upload the control module and its card"),
             repo_id)
    return f"{hub.constants.ENDPOINT}/{repo_id}"

