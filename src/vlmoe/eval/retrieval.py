"""Image-text retrieval recall@K in both directions, with several captions per image.

The protocol is the one of the Flickr30k/COCO retrieval benchmarks (Karpathy & Fei-Fei 2015;
used by CLIP and LIMoE): embed every image and every caption, rank by cosine similarity, and
count a query as a hit at K when a correct item is among its K best. An image query is correct
when *any* of its captions is in the top K; a caption query when its one image is.

Ties are counted against the query (a correct item ranks below every wrong item with an equal
score), so a model that scores everything alike gets recall ~0 rather than 1.

With `text_kind` (e.g. `vlmoe.data.grammar.caption_kind` on the scene world) recall is also
reported per kind of caption, `i2t_r@K/<kind>` and `t2i_r@K/<kind>`: text queries of that kind,
and image queries against the pool of captions of that kind (over the images that have one).

Shapes: I images, N texts, D embedding dim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vlmoe.eval.common import BatchFn, batch_field, encode_texts, model_device, to_device

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def image_to_text_ranks(sim_IN: torch.Tensor, text_image_N: torch.Tensor) -> torch.Tensor:
    """0-based rank of each image's best-scored correct caption.

    Args:
        sim_IN: (I, N) image-text similarities.
        text_image_N: (N,) index of the image each text describes.
    Returns:
        (I,) ranks; an image with no caption gets rank N (never a hit).
    """
    I, N = sim_IN.shape
    pos_IN = text_image_N[None, :] == torch.arange(I, device=sim_IN.device)[:, None]
    best_pos_I = sim_IN.masked_fill(~pos_IN, float("-inf")).amax(dim=1)
    ranks_I = (sim_IN.masked_fill(pos_IN, float("-inf")) >= best_pos_I[:, None]).sum(dim=1)
    return torch.where(pos_IN.any(dim=1), ranks_I, torch.full_like(ranks_I, N))


def text_to_image_ranks(sim_IN: torch.Tensor, text_image_N: torch.Tensor) -> torch.Tensor:
    """(N,) 0-based rank of each text's image among all images (ties counted against it)."""
    sim_NI = sim_IN.T
    pos_sim_N = sim_NI.gather(1, text_image_N[:, None].long())  # (N, 1)
    neg_NI = F.one_hot(text_image_N.long(), sim_NI.shape[1]).bool().logical_not()
    return ((sim_NI >= pos_sim_N) & neg_NI).sum(dim=1)


def recall_at_k(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """{K: fraction of queries with rank < K}."""
    n = ranks.numel()
    return {k: float((ranks < k).sum()) / n if n else 0.0 for k in ks}


def retrieval_metrics(
    image_embeds_ID: torch.Tensor,
    text_embeds_ND: torch.Tensor,
    text_image_N: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Recall@K both ways from embeddings (cosine similarity).

    Returns keys `i2t_r@K`, `t2i_r@K` and `mean_recall` (the mean of all of them, the usual
    single-number summary "RSUM / 2K").
    """
    sim_IN = (
        F.normalize(image_embeds_ID.float(), dim=-1) @ F.normalize(text_embeds_ND.float(), dim=-1).T
    )
    i2t = recall_at_k(image_to_text_ranks(sim_IN, text_image_N), ks)
    t2i = recall_at_k(text_to_image_ranks(sim_IN, text_image_N), ks)
    out = {f"i2t_r@{k}": v for k, v in i2t.items()} | {f"t2i_r@{k}": v for k, v in t2i.items()}
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def retrieval_metrics_by_kind(
    image_embeds_ID: torch.Tensor,
    text_embeds_ND: torch.Tensor,
    text_image_N: torch.Tensor,
    kinds_N: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """`i2t_r@K/<kind>`, `t2i_r@K/<kind>` for each kind of text in `kinds_N` (one per text)."""
    if len(kinds_N) != text_embeds_ND.shape[0]:
        raise ValueError(f"{len(kinds_N)} text kinds for {text_embeds_ND.shape[0]} texts")
    sim_IN = (
        F.normalize(image_embeds_ID.float(), dim=-1) @ F.normalize(text_embeds_ND.float(), dim=-1).T
    )
    t2i_ranks_N = text_to_image_ranks(sim_IN, text_image_N)
    out: dict[str, float] = {}
    for kind in sorted(set(kinds_N)):
        mask_N = torch.tensor([k == kind for k in kinds_N], device=sim_IN.device)
        has_I = torch.zeros(sim_IN.shape[0], dtype=torch.bool, device=sim_IN.device)
        has_I[text_image_N[mask_N]] = True
        i2t_ranks = image_to_text_ranks(sim_IN[:, mask_N], text_image_N[mask_N])[has_I]
        out |= {f"i2t_r@{k}/{kind}": v for k, v in recall_at_k(i2t_ranks, ks).items()}
        out |= {f"t2i_r@{k}/{kind}": v for k, v in recall_at_k(t2i_ranks_N[mask_N], ks).items()}
    return out


def encode_images_default(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """`model.encode_image(batch["images"])` (the contrastive model's API)."""
    return model.encode_image(batch["images"])


def encode_texts_default(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """`model.encode_text(batch["input_ids"], batch.get("attention_mask"))`."""
    return model.encode_text(batch["input_ids"], batch.get("attention_mask"))


class RetrievalEvaluator:
    """Recall@1/5/10 image→text and text→image over a DataLoader.

    Two ways to give several captions per image:

    - with `tokenizer`: every row is one image, and all its captions (a list of strings under
      `captions_key`, as the eval collators give them) are tokenized and embedded;
    - without: each row's tokenized caption (`input_ids`) is one text, tied to its image by
      `image_id_key` when the batch has it (captions of one image may sit in different rows),
      else row i's caption belongs to row i's image.

    Args:
        loader: yields dict batches.
        encode_image: `(model, batch) -> (B, D)` image embeddings; default
            `model.encode_image(batch["images"])`.
        encode_text: `(model, batch) -> (B, D)` text embeddings (one caption per row); default
            `model.encode_text(batch["input_ids"], batch.get("attention_mask"))`.
        image_id_key: batch key of a per-row image identifier (tensor or list), or None.
        tokenizer: vlmoe's tokenizer, to embed every caption under `captions_key`.
        text_kind: `caption -> kind` (with `tokenizer`): recall is also reported per kind.
    """

    def __init__(
        self,
        loader: Iterable[dict],
        *,
        encode_image: BatchFn | None = None,
        encode_text: BatchFn | None = None,
        image_id_key: str | None = "image_id",
        tokenizer: Any = None,
        captions_key: str = "captions",
        ks: Sequence[int] = DEFAULT_KS,
        text_kind: Callable[[str], str] | None = None,
    ) -> None:
        if text_kind is not None and tokenizer is None:
            raise ValueError("RetrievalEvaluator: text_kind needs the tokenizer (caption strings)")
        self.loader = loader
        self.text_kind = text_kind
        self.texts: list[str] = []  # the caption strings of the last `embed` (tokenizer mode)
        self.encode_image = encode_image or encode_images_default
        self.encode_text = encode_text or encode_texts_default
        self.image_id_key = image_id_key
        self.tokenizer = tokenizer
        self.captions_key = captions_key
        self.ks = tuple(ks)

    @torch.no_grad()
    def embed(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image_embeds_ID, text_embeds_ND, text_image_N) over the whole loader."""
        device = model_device(model)
        images: list[torch.Tensor] = []
        texts: list[torch.Tensor] = []
        text_image: list[int] = []
        seen: dict[object, int] = {}
        self.texts = []
        for batch in self.loader:
            batch = to_device(batch, device)
            img_BD = self.encode_image(model, batch)
            if self.tokenizer is not None:
                for i, captions in enumerate(
                    batch_field(batch, self.captions_key, "RetrievalEvaluator")
                ):
                    captions = [captions] if isinstance(captions, str) else list(captions)
                    text_image += [len(images)] * len(captions)
                    self.texts += captions
                    images.append(img_BD[i])
                    texts.append(encode_texts(model, self.tokenizer, captions))
                continue
            txt_BD = self.encode_text(model, batch)
            ids = batch.get(self.image_id_key) if self.image_id_key else None
            if ids is None:
                ids = [("row", len(text_image) + i) for i in range(img_BD.shape[0])]
            elif isinstance(ids, torch.Tensor):
                ids = ids.tolist()
            for i, key in enumerate(ids):
                if key not in seen:
                    seen[key] = len(images)
                    images.append(img_BD[i])
                text_image.append(seen[key])
            texts.append(txt_BD)
        return torch.stack(images), torch.cat(texts), torch.tensor(text_image, device=device)

    def run(self, model: torch.nn.Module) -> Iterator[tuple[str, float]]:
        image_ID, text_ND, text_image_N = self.embed(model)
        yield from retrieval_metrics(image_ID, text_ND, text_image_N, self.ks).items()
        if self.text_kind is not None:
            kinds_N = [self.text_kind(t) for t in self.texts]
            by_kind = retrieval_metrics_by_kind(image_ID, text_ND, text_image_N, kinds_N, self.ks)
            yield from by_kind.items()
        yield "num_images", image_ID.shape[0]
        yield "num_texts", text_ND.shape[0]
