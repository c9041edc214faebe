"""A trained control module named by a local folder or a Hugging Face Hub model id, as a folder here."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError

__all__ = ["looks_like_path", "module_folder"]

_EXPECTED = ("a folder holding a trained control module (config.json and diffusion_pytorch_model.safetensors, "
             "e.g. runs/run1/final) or a Hub model id (user/name)")


def looks_like_path(text: str) -> bool:
    """Whether `text` can only be a path (a Hub id is `name` or `user/name`, never ./x, /x, ~/x or a/b/c)."""
    return text.startswith((".", "/", "~", os.sep)) or text.count("/") > 1 or "\\" in text


def module_folder(source: str, flag: str = "--init-from") -> Path:
    """The folder of the control module `source`: a folder here as it is, else a Hub model id,
    downloaded (or found in the Hub cache: that works offline too).

    Args:
        source: a folder written by training (e.g. runs/run1/final) or a Hub model id.
        flag: how the user gave it, for the messages.
    Raises:
        UsageError: a path that does not exist, a malformed id, or a model the Hub cannot give.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or looks_like_path(source):
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise UsageError(f"{flag} {source} {what}; expected {_EXPECTED}.")
    import huggingface_hub as hub
    from huggingface_hub import errors

    name = source.rsplit("/", 1)[-1]
    offline = (f"{flag} {source} is not a folder here, and the Hub is offline (HF_HUB_OFFLINE=1, or no connection): "
               f"download it where there is internet (`hf download {source} --local-dir {name}`) and pass "
               f"{flag} {name}.")
    try:
        return Path(hub.snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
    except errors.HFValidationError:
        raise UsageError(f"{flag} {source} is neither a folder here nor a Hub model id; expected {_EXPECTED}.") \
            from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError, errors.RevisionNotFoundError) as error:
        raise UsageError(f"{flag} {source} is not a folder here, and the Hub has no model {source!r} this token may "
                         f"read ({type(error).__name__}); expected {_EXPECTED}.") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, errors.HTTPError):
        raise UsageError(offline) from None
