"""A tiny random Stable Diffusion stack in the diffusers folder layout, made entirely in code.

It has SD1.5's structure (CLIP text encoder, a UNet with cross-attention, a VAE with scale
factor 8, SD1.5's scheduler), only small and untrained, so the whole library can be run and
tested offline: `load_base(folder)` reads it back through the same code path as real SD1.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..data.colours import COLOURS

# Words the tiny tokenizer knows as single tokens; anything else falls back to bytes.
BASE_WORDS = ("a", "an", "the", "of", "and", "with", "circle", "background", "disk", "photo", "on", "in")


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges, learned on `words` until every word is a single symbol.

    A merge learned this way re-applies in the same order when the word is encoded, so each
    word of the vocabulary becomes exactly one token.
    """
    words_as_symbols = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in sorted(set(words))]
    merges = []
    while any(len(w) > 1 for w in words_as_symbols):
        counts: dict[tuple[str, str], int] = {}
        for w in words_as_symbols:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))  # most frequent, then alphabetical
        merges.append(best)
        merged_words = []
        for w in words_as_symbols:
            out, i = [], 0
            while i < len(w):
                if w[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged_words.append(tuple(out))
        words_as_symbols = merged_words
    return merges


def write_tokenizer_files(folder: Path, words: list[str]) -> None:
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt): every byte, and each of `words` as one token."""
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges = _learn_merges(words)
    vocab += [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(dict.fromkeys(vocab))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")


def tiny_vocabulary() -> list[str]:
    """The words of every colour name plus a few common prompt words."""
    words = {w for colour in COLOURS for w in colour.words.split()}
    return sorted(words | set(BASE_WORDS))


def make_tiny_base(out_dir: str | Path, seed: int = 0, cross_attention_dim: int = 32) -> Path:
    """Write a tiny random SD stack (images of 64 px -> 8x8 latents) to `out_dir`.

    Args:
        out_dir: destination folder (created); it then loads with `load_base(out_dir)`.
        seed: seed of the random weights.
        cross_attention_dim: width of the text embeddings.
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer_dir = out_dir / "tokenizer"
    write_tokenizer_files(tokenizer_dir, tiny_vocabulary())
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=cross_attention_dim,
            intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    # SD1.5's own scheduler configuration.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out_dir)
    return out_dir
