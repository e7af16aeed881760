"""The all-to-all dispatcher: expert parallelism behind the `Dispatcher` contract.

Legend: T local tokens, D model dim, K experts per token, E experts, P ranks in the EP group,
L = E / P experts per rank, N = T * K local pairs, M rows this rank's experts compute.

GShard (Lepikhin et al. 2020) and DeepSpeed-MoE (Rajbhandari et al. 2022) spread the experts
over ranks and move tokens with two all-to-alls; this is that, on the sort-based buffer:

1. plan and gather locally exactly as `Dispatcher` does (same capacity, same drops): the buffer
   is sorted by global expert, kept rows first, so rows for rank p's experts are one slice;
2. exchange the per-expert counts (a tiny all-to-all), so every rank knows how many rows each
   peer sends to each of its L experts (zero is fine: ranks and experts may receive nothing);
3. `all_to_all_single` with uneven splits; the received rows, ordered (source rank, expert),
   are permuted to (expert, source rank) so each local expert reads one contiguous slice;
4. the experts run on their M rows (`DispatchPlan.expert_counts` = rows per local expert);
5. `combine` undoes 3 (permute back, reverse all-to-all), puts zeros for dropped rows, and then
   combines locally exactly as `Dispatcher` does.

Every rank issues the same collectives in every forward and backward (one count exchange and
two all-to-alls per layer, whatever the routing), so no routing outcome can hang a step. The
split sizes are read on the host once per layer (the only sync).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from vlmoe.distributed.comm import _all_to_all, all_to_all
from vlmoe.moe.dispatch import Dispatcher, DispatchPlan, DropPolicy


@dataclass(frozen=True)
class ExpertParallelPlan(DispatchPlan):
    """The local plan, plus how rows moved between ranks.

    send_splits[p]: rows sent to EP rank p; recv_splits[p]: rows received from it.
    to_expert_major_M: buffer row m (local-expert major) is received row to_expert_major_M[m].
    from_expert_major_M: its inverse.
    """

    send_splits: tuple[int, ...] = ()
    recv_splits: tuple[int, ...] = ()
    to_expert_major_M: Tensor | None = None
    from_expert_major_M: Tensor | None = None


class _Permute(torch.autograd.Function):
    """y = x[index]; backward gathers by the inverse permutation (no scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class AllToAllDispatcher(Dispatcher):
    """Dispatch to experts held by the ranks of `group` (P ranks, E / P experts each).

    Same settings and same plan as `Dispatcher`; `Experts` on this rank holds experts
    [ep_rank * L, (ep_rank + 1) * L) and receives `plan.expert_counts` (L,) rows per expert.
    """

    def __init__(
        self,
        num_experts: int,
        capacity_factor: float | None,
        drop_policy: DropPolicy,
        group_size: int | None,
        ep: int,
        group,
    ) -> None:
        super().__init__(num_experts, capacity_factor, drop_policy, group_size)
        if num_experts % ep:
            raise ValueError(f"num_experts={num_experts} must be a multiple of ep={ep}")
        self.ep, self.group = ep, group

    def dispatch(
        self,
        x_TD: Tensor,
        expert_ids_TK: Tensor,
        weights_TK: Tensor,
        priority_T: Tensor | None = None,
    ) -> tuple[Tensor, ExpertParallelPlan]:
        """(T, D) local tokens -> (M, D) rows for this rank's experts, sorted by local expert."""
        x_sorted_ND, plan = super().dispatch(x_TD, expert_ids_TK, weights_TK, priority_T)
        P, L = self.ep, self.num_experts // self.ep
        recv_PL = _all_to_all(plan.counts_E, [L] * P, [L] * P, self.group).view(P, L)
        send_P, recv_PL_host = plan.counts_E.view(P, L).sum(1).tolist(), recv_PL.tolist()
        recv_P = [sum(row) for row in recv_PL_host]
        x_recv_MD = all_to_all(x_sorted_ND[: sum(send_P)], recv_P, send_P, self.group)
        # Received rows come (source, expert)-major; number each block by (expert, source).
        block_key = (
            torch.arange(L, device=x_TD.device)[None, :] * P
            + torch.arange(P, device=x_TD.device)[:, None]
        )  # (P, L)
        key_M = block_key.reshape(-1).repeat_interleave(recv_PL.reshape(-1))
        to_em = key_M.argsort(stable=True)
        from_em = torch.empty_like(to_em)
        from_em[to_em] = torch.arange(to_em.numel(), device=to_em.device)
        x_MD = _Permute.apply(x_recv_MD, to_em, from_em)
        fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
        fields["local_counts"] = recv_PL.sum(0)
        ep_plan = ExpertParallelPlan(
            **fields,
            send_splits=tuple(send_P),
            recv_splits=tuple(recv_P),
            to_expert_major_M=to_em,
            from_expert_major_M=from_em,
        )
        return x_MD, ep_plan

    def combine(self, y_MD: Tensor, plan: ExpertParallelPlan) -> Tensor:
        """(M, D) local expert outputs -> (T, D) local tokens, router-weighted."""
        y_recv_MD = _Permute.apply(y_MD, plan.from_expert_major_M, plan.to_expert_major_M)
        send, recv = list(plan.send_splits), list(plan.recv_splits)
        y_sent = all_to_all(y_recv_MD, send, recv, self.group)
        N = plan.order_N.numel()
        # Dropped pairs sit past the kept rows and are never sent: they combine as zeros.
        y_ND = torch.cat([y_sent, y_sent.new_zeros(N - y_sent.shape[0], y_sent.shape[1])])
        return super().combine(y_ND, plan)
