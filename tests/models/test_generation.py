import pytest
import torch

import vlmoe
from vlmoe.models.generation import sample_next

GEN_PRESETS = ["text-debug", "text-debug-moe", "decoder-debug", "decoder-debug-moe"]


def _model(name):
    torch.manual_seed(0)
    return vlmoe.create_model(name).eval()


def _images(model, batch):
    if model.architecture != "decoder":
        return None
    s = model.config.vision.image_size
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(1))


def _prompts(vocab):
    """Three prompts of lengths 4, 2, 3, left-padded with token 0."""
    g = torch.Generator().manual_seed(2)
    lengths = [4, 2, 3]
    ids = torch.zeros(3, 4, dtype=torch.long)
    mask = torch.zeros(3, 4, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 4 - n :] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, 4 - n :] = 1
    return ids, mask, lengths


def _vocab(model):
    return (
        model.config.text.vocab_size if model.architecture == "decoder" else model.config.vocab_size
    )


@pytest.mark.parametrize("name", GEN_PRESETS)
def test_cached_equals_uncached_token_for_token(name):
    model = _model(name)
    ids, mask, _ = _prompts(_vocab(model))
    kw = dict(images=_images(model, 3)) if model.architecture == "decoder" else {}
    cached = model.generate(ids, mask, max_new_tokens=10, cache="kv", **kw)
    uncached = model.generate(ids, mask, max_new_tokens=10, cache="none", **kw)
    assert cached.shape == (3, 10)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", GEN_PRESETS)
def test_batched_left_padded_equals_one_by_one(name):
    model = _model(name)
    ids, mask, lengths = _prompts(_vocab(model))
    images = _images(model, 3)
    kw = (
        (lambda i: dict(images=images if i is None else images[i : i + 1]))
        if images is not None
        else (lambda i: {})
    )
    batched = model.generate(ids, mask, max_new_tokens=8, **kw(None))
    for i, n in enumerate(lengths):
        alone = model.generate(ids[i : i + 1, 4 - n :], None, max_new_tokens=8, **kw(i))
        assert torch.equal(batched[i], alone[0]), i


def test_stop_tokens_and_padding_after_stop():
    model = _model("text-debug")
    ids, mask, _ = _prompts(model.config.vocab_size)
    free = model.generate(ids, mask, max_new_tokens=6)
    stop = int(free[0, 1])
    out = model.generate(ids, mask, max_new_tokens=6, stop_tokens=[stop], pad_token_id=-1)
    row = out[0].tolist()
    assert row[: row.index(stop) + 1] == free[0, : row.index(stop) + 1].tolist()
    assert all(t == -1 for t in row[row.index(stop) + 1 :])
    # All rows stopped at their first token: generation ends early.
    first = model.generate(ids, mask, max_new_tokens=6, stop_tokens=free[:, 0].tolist())
    assert first.shape[1] == 1


def test_sampling_controls():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits).item() == 1
    assert all(
        sample_next(logits, temperature=1.0, top_k=1, generator=g).item() == 1 for _ in range(20)
    )
    picks = {sample_next(logits, temperature=1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert picks == {1, 2}
    # top_p below the top token's mass keeps only the top token.
    assert all(
        sample_next(logits, temperature=1.0, top_p=0.5, generator=g).item() == 1 for _ in range(20)
    )


def test_sampling_is_reproducible_with_a_generator():
    model = _model("decoder-debug-moe")
    ids, mask, _ = _prompts(model.config.text.vocab_size)
    images = _images(model, 3)
    kw = dict(images=images, max_new_tokens=5, temperature=0.8, top_p=0.9)
    a = model.generate(ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    b = model.generate(ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    c = model.generate(ids, mask, generator=torch.Generator().manual_seed(4), **kw)
    assert not torch.equal(a, c)  # the generator really drives the sampling
    assert torch.equal(a, b)


def test_right_padded_prompts_are_refused():
    model = _model("text-debug")
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(torch.ones(1, 3, dtype=torch.long), torch.tensor([[1, 1, 0]]))
    enc = vlmoe.create_model("text-debug", attention="bidirectional")
    with pytest.raises(ValueError, match="causal"):
        enc.generate(torch.ones(1, 3, dtype=torch.long))


IMG = 4  # the <image> placeholder id of vlmoe.data's trained tokenizers


def _placeholder_model():
    torch.manual_seed(0)
    return vlmoe.create_model("decoder-debug-moe", image_token_id=IMG).eval()


def test_placeholders_equal_prepended_image_tokens():
    model = _placeholder_model()
    prepend = vlmoe.create_model("decoder-debug-moe").eval()
    prepend.load_state_dict(model.state_dict())
    N = model.num_image_tokens
    images = _images(model, 2)
    text = torch.randint(5, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.full((2, N), IMG), text], 1)
    a = model(images, ids)
    b = prepend(images, text)
    assert a.logits.shape == (2, N + 5, 64) and a.num_image_tokens == N
    assert torch.allclose(a.logits[:, N:], b.logits, atol=1e-5)
    assert torch.equal(a.image_token_mask, ids == IMG)
    with pytest.raises(ValueError, match=f"needs {N} <image> placeholder tokens"):
        model(images, text)


def test_placeholder_generation_cached_batched():
    """Prompts `<bos> <image>*N prompt`, left-padded, as vlmoe.data's GenerationCollate makes."""
    model = _placeholder_model()
    N = model.num_image_tokens
    g = torch.Generator().manual_seed(5)
    lengths = [3, 1, 2]
    rows = [[2] + [IMG] * N + torch.randint(5, 64, (n,), generator=g).tolist() for n in lengths]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    images = _images(model, 3)
    cached = model.generate(ids, mask, images=images, max_new_tokens=6)
    assert torch.equal(
        cached, model.generate(ids, mask, images=images, max_new_tokens=6, cache="none")
    )
    assert not (cached == IMG).any()
    for i, r in enumerate(rows):
        alone = model.generate(torch.tensor([r]), images=images[i : i + 1], max_new_tokens=6)
        assert torch.equal(alone[0], cached[i])


@pytest.mark.parametrize("name", ["text-debug-moe", "decoder-debug-moe"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_iter_generate_yields_what_generate_returns(name, temperature):
    from vlmoe.models.generation import iter_generate

    model = _model(name)
    ids, mask, _ = _prompts(_vocab(model))
    kw = dict(images=_images(model, 3)) if model.architecture == "decoder" else {}
    opts = dict(max_new_tokens=9, temperature=temperature, top_p=0.9, stop_tokens=[5, 7], **kw)
    whole = model.generate(ids, mask, generator=torch.Generator().manual_seed(3), **opts)
    steps = list(
        iter_generate(model, ids, mask, generator=torch.Generator().manual_seed(3), **opts)
    )
    assert all(s.shape == (3,) for s in steps)
    assert torch.equal(torch.stack(steps, dim=1), whole)


def test_iter_generate_stops_when_closed():
    from vlmoe.models.generation import iter_generate

    model = _model("text-debug-moe")
    calls = []
    real = model.next_token_logits
    model.next_token_logits = lambda *a: calls.append(1) or real(*a)
    it = iter_generate(model, torch.tensor([[1, 2]]), max_new_tokens=50)
    next(it), next(it)
    it.close()
    assert len(calls) == 2  # the prompt, then one decode step; nothing after close
