"""MAUVE (Pillutla et al. 2021), LD4LG's headline metric, behind an option: it needs a large pretrained
language model for features (``gpt2-large`` in LD4LG) and the ``mauve-text`` package (``pip install
'textdiff[mauve]'``), neither of which this library can assume offline.

Features follow ``mauve-text``'s own featurisation (``featurize_tokens_from_model``): each text is tokenised
(truncated to ``max_len`` tokens) and its feature is the final layer's hidden state at its last token.
Computing them here rather than inside ``mauve.compute_mauve`` lets any local model directory serve (the
package only accepts names containing "gpt2" or "bert"); the quantisation, divergence curve and area are
``mauve.compute_mauve``'s, with its defaults (k-means on PCA features, n/10 buckets, scaling factor 5).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence


def featurize_texts(texts: Sequence[str], model: Any, tokenizer: Any, *, max_len: int = 256,
                    batch_size: int = 16) -> Any:
    """Final-layer hidden state at each text's last token: (N, d) float32 torch tensor (on CPU).

    Args:
        texts: N strings (an empty text is featurised from one special token: EOS, else BOS, SEP, CLS, UNK).
        model: a Hugging Face model returning ``hidden_states`` (``AutoModel``/``AutoModelForCausalLM``).
        tokenizer: its tokenizer (``transformers``).
        max_len: truncation length in tokens (LD4LG: 256).
        batch_size: texts per forward pass (right-padded; padding never reaches the last real token of a
            causal model).
    """
    import torch

    if len(texts) == 0:
        raise ValueError("no texts to featurise")
    device = next(model.parameters()).device
    specials = (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.sep_token_id, tokenizer.cls_token_id,
                tokenizer.unk_token_id)
    fallback = next((t for t in specials if t is not None), 0)  # the token an empty text is featurised from
    encoded = []
    for text in texts:
        ids = tokenizer.encode(text, truncation=True, max_length=max_len) if text.strip() else []
        encoded.append(ids or [fallback])
    was = model.training
    model.eval()
    feats = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            lengths = torch.tensor([len(c) for c in chunk])
            ids = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)
            for row, c in enumerate(chunk):
                ids[row, :len(c)] = torch.tensor(c)
            mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                        return_dict=True)
            last = out.hidden_states[-1][torch.arange(len(chunk)), lengths.to(device) - 1]  # (b, d)
            feats.append(last.float().cpu())
    model.train(was)
    return torch.cat(feats)


def mauve_score(samples: Sequence[str], references: Sequence[str], *, model: str = "gpt2-large",
                max_len: int = 256, batch_size: int = 16, device: Optional[str] = None, seed: int = 25,
                **mauve_kwargs: Any) -> dict[str, float]:
    """MAUVE of ``samples`` against ``references`` (human text, e.g. the test split).

    Args:
        samples, references: the two text sets (LD4LG: 1,000 each, per seed).
        model: the featurising model, a hub name or a local directory (``AutoModel.from_pretrained``).
        max_len, batch_size: see ``featurize_texts``.
        device: where to featurise (default: CUDA when available).
        seed: k-means seed of ``mauve.compute_mauve`` (its default, 25).
        **mauve_kwargs: other ``mauve.compute_mauve`` options (``num_buckets``, ``mauve_scaling_factor``, ...).

    Returns:
        {"mauve": the area under the divergence curve, in (0, 1]; "mauve_num_buckets": the histogram size}.

    Raises:
        ImportError: ``mauve-text`` is not installed (the message says how to install it).
    """
    try:
        import mauve
    except ImportError as err:
        raise ImportError("MAUVE needs the mauve-text package: pip install 'textdiff[mauve]' "
                          "(or pip install mauve-text)") from err
    import torch
    from transformers import AutoModel, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model)
    net = AutoModel.from_pretrained(model).to(device)
    p = featurize_texts(samples, net, tokenizer, max_len=max_len, batch_size=batch_size)
    q = featurize_texts(references, net, tokenizer, max_len=max_len, batch_size=batch_size)
    out = mauve.compute_mauve(p_features=p.numpy(), q_features=q.numpy(), seed=seed, verbose=False, **mauve_kwargs)
    return {"mauve": float(out.mauve), "mauve_num_buckets": int(out.num_buckets)}
