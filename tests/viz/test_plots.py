"""Plots write non-empty PNGs of the expected size for synthetic inputs."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlmoe.config import MoEConfig
from vlmoe.moe.layer import MoELayer
from vlmoe.moe.router import modality_expert_mask
from vlmoe.viz.common import DPI
from vlmoe.viz.curves import _grid, default_metrics, metric_title, plot_curves, read_metrics
from vlmoe.viz.expert_load import (
    _uniform_note,
    load_fractions,
    load_from_results,
    plot_expert_load,
    reachable_from_results,
)
from vlmoe.viz.routing import (
    MAX_DRAW_SIDE,
    _nested_squares,
    bounded_image,
    default_title,
    draw_patch_routing,
    expert_group_names,
    layer_routing,
    plot_patch_routing,
    token_ranked,
    token_top1,
)


def png_size(path):
    assert path.stat().st_size > 2000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def write_run(path, scale):
    with open(path, "w") as f:
        for step in range(0, 100, 10):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "split": "train",
                        "loss": scale * math.exp(-step / 30),
                        "lr": 1e-3,
                    }
                )
                + "\n"
            )
            if step % 50 == 0:
                f.write(json.dumps({"step": step, "split": "eval", "accuracy": step / 100}) + "\n")
        f.write('{"step": 100, "split": "tr')  # torn last line


def test_curves_dense_vs_moe(tmp_path):
    write_run(tmp_path / "dense.jsonl", 2.0)
    (tmp_path / "moe").mkdir()
    write_run(tmp_path / "moe" / "metrics.jsonl", 1.5)
    series = read_metrics(tmp_path / "moe")  # a run directory works too
    assert series["train/loss"][0][:2] == [0.0, 10.0]
    assert series["eval/accuracy"] == ([0.0, 50.0], [0.0, 0.5])
    assert default_metrics({"moe": series}) == ["train/loss", "eval/accuracy"]
    out = plot_curves(
        {"dense": tmp_path / "dense.jsonl", "moe": tmp_path / "moe"},
        tmp_path / "curves.png",
        title="dense vs MoE",
    )
    assert png_size(out) == (round(4.2 * 2 * DPI), round(3.6 * DPI))
    with pytest.raises(ValueError, match="no metrics"):
        plot_curves({"x": {}}, tmp_path / "none.png")


def test_expert_load_heatmap(tmp_path):
    counts = np.zeros((3, 2, 8))
    counts[:, 0, :4] = 10
    counts[:, 1, 4:] = 5
    frac = load_fractions(counts)
    np.testing.assert_allclose(frac.sum(-1), 1.0)
    np.testing.assert_allclose(frac[0, 0, :4], 0.25)
    out = plot_expert_load(counts, tmp_path / "load.png", layer_names=["b1", "b3", "b5"])
    w, h = png_size(out)
    assert w > h > 150
    # A modality with no tokens at all gets no panel.
    counts[:, 1] = 0
    w1, _ = png_size(plot_expert_load(counts, tmp_path / "load1.png"))
    assert w1 < w


def routed_example(capacity_factor=None, num_layers=2, grid=(4, 4), num_text=5):
    torch.manual_seed(0)
    cfg = MoEConfig(dim=8, hidden_dim=16, num_experts=4, top_k=2, capacity_factor=capacity_factor)
    num_patches = grid[0] * grid[1]
    x = torch.randn(1, 1 + num_patches + num_text, 8)  # [cls ; patches ; text]
    modality = torch.tensor([[0] * (1 + num_patches) + [1] * num_text])
    auxes = []
    for _ in range(num_layers):
        y, aux = MoELayer(cfg)(x, modality)
        x = x + y
        auxes.append(aux)
    return auxes


def test_token_top1_and_layer_routing():
    (aux,) = routed_example(num_layers=1)
    expert_T, conf_T = token_top1(aux)
    assert expert_T.tolist() == aux.expert_ids_TK[:, 0].tolist()  # dropless: the top choice
    torch.testing.assert_close(conf_T, aux.probs_TE.gather(1, aux.expert_ids_TK[:, :1]).squeeze(1))
    layer = layer_routing(aux, (4, 4), "moe0", num_text=5)
    # patches are the 16 image tokens after the class token, in raster order
    assert layer.patch_expert.shape == (4, 4)
    assert layer.patch_expert.ravel().tolist() == expert_T[1:17].tolist()
    assert layer.token_expert.tolist() == expert_T[17:].tolist()


def test_token_top1_marks_tokens_no_expert_computed():
    (aux,) = routed_example(capacity_factor=0.25, num_layers=1)
    expert_T, conf_T = token_top1(aux)
    none_T = ~aux.kept_TK.any(dim=1)
    assert none_T.any()
    assert (expert_T[none_T] == -1).all() and (conf_T[none_T] == 0).all()
    assert (expert_T[~none_T] >= 0).all()


@pytest.mark.parametrize("with_text", [True, False])
def test_patch_routing_plot(tmp_path, with_text):
    auxes = routed_example(capacity_factor=0.5, num_layers=3)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[4:14, 4:20] = (255, 0, 0)
    tokens = ["what", "colour", "is", "the", "square"] if with_text else None
    out = plot_patch_routing(
        image,
        auxes,
        (4, 4),
        tokens,
        tmp_path / "routing.png",
        layer_names=["blocks.1", "blocks.3", "blocks.5"],
    )
    w, h = png_size(out)
    assert w == round((2.7 * 4 + 0.3) * DPI)
    with Image.open(out) as im:
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 10
    with pytest.raises(ValueError, match="no MoE layers"):
        plot_patch_routing(image, [], (4, 4), tokens, tmp_path / "none.png")


def test_expert_load_from_eval_results(tmp_path):
    results = {
        "routing/blocks.1/image/tokens_per_expert": [3, 1, 0],
        "routing/blocks.1/text/tokens_per_expert": [0, 2, 2],
        "routing/blocks.3/image/tokens_per_expert": [1, 1, 1],
        "routing/blocks.3/drop_rate": 0.0,
        "cls/accuracy": 0.5,
    }
    counts, names = load_from_results(results)
    assert names == ["blocks.1", "blocks.3"]
    assert counts.tolist() == [[[3, 1, 0], [0, 2, 2]], [[1, 1, 1], [0, 0, 0]]]
    assert png_size(plot_expert_load(counts, tmp_path / "l.png", layer_names=names))[0] > 300
    with pytest.raises(ValueError, match="no 'routing/"):
        load_from_results({"cls/accuracy": 1.0})


def test_default_metrics_prefer_task_loss_and_held_out_quality():
    keys = [
        "train/loss",
        "train/loss/task",
        "train/loss/moe/load_balance",
        "train/loss/moe/z_loss",
        "train/acc/train_vqa",
        "train/lr",
        "train/examples_per_s",
        "train/grad_norm",
        "eval/vqa/accuracy",
        "eval/vqa/accuracy/colour",
        "eval/vqa/seconds",
        "eval/captioning/bleu4",
    ]
    series = {k: ([0.0], [1.0]) for k in keys}
    assert default_metrics({"moe": series}) == [
        "train/loss/task",
        "eval/captioning/bleu4",
        "eval/vqa/accuracy",
        "train/acc/train_vqa",
        "train/loss/moe/load_balance",
        "train/loss/moe/z_loss",
        "train/loss",
    ]


def test_token_ranked_holds_every_kept_expert_by_weight():
    (aux,) = routed_example(num_layers=1)
    ranked = token_ranked(aux)
    assert torch.equal(ranked[:, 0], token_top1(aux)[0])
    w = aux.weights_TK
    first_is_heavier = (w[:, 0] >= w[:, 1]).tolist()
    for t, heavier in enumerate(first_is_heavier):
        want = aux.expert_ids_TK[t].tolist() if heavier else aux.expert_ids_TK[t].flip(0).tolist()
        assert ranked[t].tolist() == want
    layer = layer_routing(aux, (4, 4), "moe0", num_text=5)
    assert layer.patch_ranked.shape == (4, 4, 2) and layer.token_ranked.shape == (5, 2)
    assert layer.patch_ranked[..., 0].tolist() == layer.patch_expert.tolist()
    (dropped,) = routed_example(capacity_factor=0.25, num_layers=1)
    r = token_ranked(dropped)
    assert ((r >= 0).sum(1) == dropped.kept_TK.sum(1)).all()


def test_nested_squares_draw_the_second_expert_inside_the_patch():
    colors = np.eye(4)[:, [0, 1, 2, 3]] * 0.5 + 0.25
    sq = _nested_squares(np.array([[[0, 2], [1, -1]]]), colors)  # (1, 2, K=2) -> (4, 8, 4)
    assert sq.shape == (4, 8, 4)
    assert (sq[1:3, 1:3, :3] == colors[2, :3]).all() and (sq[1:3, 1:3, 3] > 0).all()
    assert (sq[0, :4, 3] == 0).all() and (sq[:, 4:, 3] == 0).all()  # border; no 2nd expert


def test_expert_groups_and_titles():
    cfg = MoEConfig(num_experts=8, top_k=2, expert_groups="modality", num_cross_modal_experts=2)
    names = expert_group_names(modality_expert_mask(cfg).numpy())
    assert names == ["image"] * 3 + ["text"] * 3 + ["cross-modal"] * 2
    assert expert_group_names(None) is None
    assert default_title(True, False) == "Which expert each image patch went to"
    assert default_title(True, True) == "Which expert each image patch and text token went to"


def test_routing_picture_of_a_huge_image_is_drawn_small(tmp_path):
    import tracemalloc

    (aux,) = routed_example(num_layers=1)
    layer = layer_routing(aux, (4, 4), "moe0", num_text=5)
    image = np.zeros((4000, 3000, 3), np.uint8)  # 36 MB; drawn at full size it took gigabytes
    image[:2000] = 200
    assert bounded_image(image).shape == (MAX_DRAW_SIDE, 384, 3)
    tracemalloc.start()
    draw_patch_routing(image, [layer], ["a"] * 5, tmp_path / "r.png")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40e6, f"{peak / 1e6:.0f} MB traced while drawing"


def test_expert_load_marks_unreachable_experts_and_uses_the_group_reference(tmp_path):
    from vlmoe.eval.routing import RoutingStats

    cfg = MoEConfig(
        dim=8,
        hidden_dim=8,
        num_experts=8,
        top_k=1,
        expert_groups="modality",
        num_cross_modal_experts=2,
    )
    torch.manual_seed(0)
    x = torch.randn(1, 40, 8)
    modality = torch.tensor([[0] * 24 + [1] * 16])
    _, aux = MoELayer(cfg)(x, modality)
    rs = RoutingStats(["blocks.1"])
    rs.update([aux])
    reach = np.asarray(rs.reachable_LME())
    assert reach.shape == (1, 2, 8)
    assert reach[0, 0].tolist() == [True] * 3 + [False] * 3 + [True] * 2
    assert _uniform_note(reach[:, 0]) == "uniform = 1/5 = 0.200"  # not 1/8
    results = {f"routing/{k}": v for k, v in rs.results()}
    counts, names = load_from_results(results)
    assert np.array_equal(reachable_from_results(results, counts, names), reach)
    assert reachable_from_results({}, counts, names) is None
    plain = plot_expert_load(counts, tmp_path / "plain.png", layer_names=names)
    marked = plot_expert_load(counts, tmp_path / "marked.png", names, reachable_LME=reach)
    with Image.open(plain) as a, Image.open(marked) as b:
        assert a.size == b.size and not np.array_equal(np.asarray(a), np.asarray(b))
    one_pool = RoutingStats()
    one_pool.update(routed_example(num_layers=1))
    assert one_pool.reachable_LME() is None
    with pytest.raises(ValueError, match="reachable_LME has shape"):
        plot_expert_load(counts, tmp_path / "bad.png", reachable_LME=np.ones((3, 3), bool))


@pytest.mark.parametrize(
    ("key", "title"),
    [
        ("train/loss", "total loss (train)"),
        ("train/loss/task", "task loss (train)"),
        ("train/loss/vqa", "VQA loss (train)"),
        ("train/loss/moe/load_balance", "load-balance loss (train)"),
        ("train/loss/moe/local_entropy/image", "local entropy loss (image) (train)"),
        ("train/acc/train_cls", "classification accuracy (train)"),
        ("train/moe/effective_top_k", "effective top-k (experts used per token) (train)"),
        ("eval/vqa/accuracy", "VQA accuracy (held-out)"),
        ("eval/vqa/accuracy/colour", "VQA accuracy: colour (held-out)"),
        ("eval/captioning/bleu4", "captioning BLEU-4 (held-out)"),
        ("eval/retrieval/mean_recall", "retrieval mean recall (held-out)"),
        ("accuracy", "accuracy"),
    ],
)
def test_metric_titles_are_readable(key, title):
    assert metric_title(key) == title


@pytest.mark.parametrize("n", range(1, 13))
def test_curve_grid_has_no_empty_cell(n):
    from vlmoe.viz.common import new_figure

    fig = new_figure(8, 8)
    axes = _grid(fig, n)
    assert len(axes) == len(fig.axes) == n
    # Every row is filled edge to edge: the spans of each row's axes cover all grid columns.
    rows = {}
    for ax in axes:
        spec = ax.get_subplotspec()
        rows.setdefault(spec.rowspan.start, []).append(spec.colspan)
    ncols = spec.get_gridspec().ncols
    for spans in rows.values():
        assert sorted(c for span in spans for c in span) == list(range(ncols))


def test_moe_curves_plotted_and_unlogged_metrics_left_out(tmp_path, caplog):
    rows = [
        {
            "step": s,
            "split": "train",
            "loss/task": 1 / s,
            "loss/moe/load_balance": 1 + 1 / s,
            "loss/moe/z_loss": 2 / s,
            "loss/moe/local_entropy/image": 0.5,
            "loss/moe/global_entropy/image": -1.0,
            "moe/effective_top_k": 1.9,
            "moe/max_load_ratio": 2.5,
        }
        for s in range(1, 6)
    ]
    (tmp_path / "moe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    series = read_metrics(tmp_path / "moe.jsonl")
    panels = default_metrics({"moe": series})
    assert panels[:5] == [
        "train/loss/task",
        "train/loss/moe/load_balance",
        "train/loss/moe/z_loss",
        "train/moe/effective_top_k",
        "train/moe/max_load_ratio",
    ]
    assert panels[5] == (
        "train/loss/moe/global_entropy/image",
        "train/loss/moe/local_entropy/image",
    )
    out = plot_curves({"moe": series}, tmp_path / "c.png", metrics=[*panels, "eval/bleu4"])
    assert "eval/bleu4" in caplog.text  # named, and not drawn as an empty panel
    assert png_size(out) == (round(4.2 * 3 * DPI), round(3.2 * 2 * DPI))


def test_image_only_routing_picture_has_no_text_band(tmp_path):
    (aux,) = routed_example(num_layers=1)
    image_only = layer_routing(aux, (4, 4), "moe0", text_index=torch.tensor([], dtype=torch.long))
    assert image_only.token_expert is None
    image = np.zeros((32, 32, 3), np.uint8)
    sizes = {
        png_size(draw_patch_routing(image, [image_only], tokens, tmp_path / f"{i}.png"))
        for i, tokens in enumerate([None, [], ["a", "b"]])
    }
    assert len(sizes) == 1  # tokens without routed text tokens reserve no band
    with_text = layer_routing(aux, (4, 4), "moe0", num_text=5)
    _, h_text = png_size(draw_patch_routing(image, [with_text], ["a"] * 5, tmp_path / "t.png"))
    assert h_text > next(iter(sizes))[1]
