"""A straightforward, independent rewrite of upstream stp.py's JEPA loss, for equivalence tests.

Imports nothing from llmjepa. Written from galilai-group/llm-jepa stp.py's definitions:
- find_start_end: the content tokenized alone, compared with the conversation token by token as
  decoded text, searched from the end; it returns (start - 1, end - 1), upstream's convention;
- the batch: rows right-padded with the pad id, a 2D attention mask, no position_ids, one forward
  with output_hidden_states=True; H = hidden_states[layer] of each row;
- e2e, mean, random_span (before + after -> patch, three cases) and curvature as per-example
  Python loops, the cosine loss 1 - sum(cos * w) / sum(w), --jepa_mse the mean squared error.
Random spans are given (content offsets [s, t) per example and draw), not drawn.
"""

import torch
import torch.nn.functional as F


def find_start_end(tokenizer, content: str, input_ids: list[int]) -> tuple[int, int]:
    tokens = tokenizer.encode(content, add_special_tokens=False)
    want = [tokenizer.decode(t) for t in tokens]
    have = [tokenizer.decode(t) for t in input_ids]
    for i in range(len(input_ids) - len(tokens), -1, -1):
        if have[i : i + len(tokens)] == want:
            assert i > 0
            return i - 1, i + len(tokens) - 1
    raise AssertionError(f"cannot find {content!r}")


def hidden_states(model, rows: list[list[int]], pad_id: int, layer: int) -> torch.Tensor:
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[layer]


def embeddings(h: torch.Tensor, use: list, ase: list, patch_start_offset: int, patch_end_offset: int) -> tuple:
    user_start, user_end = use[0] + 1, use[1] + 1
    assistant_start, assistant_end = ase[0] + 1, ase[1] + 1
    if patch_start_offset + user_start < user_end:
        patch_start = user_start + patch_start_offset
    else:
        patch_start = assistant_start + patch_start_offset - (user_end - user_start)
    if patch_end_offset + user_start < user_end:
        patch_end = user_start + patch_end_offset
    else:
        patch_end = assistant_start + patch_end_offset - (user_end - user_start)
    us, ue = h[user_start - 1], h[user_end - 1]
    as_, ae = h[assistant_start - 1], h[assistant_end - 1]
    ps, pe = h[patch_start - 1], h[patch_end - 1]
    if patch_start >= assistant_start:
        return ue - us + ps - as_, pe - ps, ae - pe
    if patch_end <= user_end:
        return ps - us, pe - ps, ue - pe + ae - as_
    return ps - us, ue - ps + pe - as_, ae - pe


def weight(full: int, patch: int, adjustment: str | None) -> float:
    rest = full - patch
    if adjustment is None:
        return 1.0
    if adjustment == "cosine_like":
        return 2.0 * rest * patch / (rest * rest + patch * patch)
    return 1.0 - abs(rest - patch) / (rest + patch)


def curvature(h: torch.Tensor, start: int, end_exclusive: int) -> tuple:
    length = end_exclusive - start
    if length <= 1:
        return 0.0, 0
    total = 0.0
    for i in range(start + 1, end_exclusive):
        prev = h[i - 1] - h[i - 2]
        curr = h[i] - h[i - 1]
        cosine = torch.clamp(torch.dot(prev, curr) / (torch.norm(prev) * torch.norm(curr)), -1.0, 1.0)
        total = total + torch.abs(torch.acos(cosine))
    return total, length - 1


def jepa_loss(
    model,
    rows: list[list[int]],
    user_se: list[list[int]],
    assistant_se: list[list[int]],
    mode: str,
    pad_id: int,
    layer: int = -1,
    predictor=None,
    mse: bool = False,
    offsets: list[tuple[int, int]] | None = None,  # random_span: per example and draw, in order
    times: int = 1,
    adjustment: str | None = None,
    span_e2e: bool = False,
    span_all: bool = False,
) -> torch.Tensor:
    h = hidden_states(model, rows, pad_id, layer)
    n = h.shape[0]
    user_se = [list(x) for x in user_se]
    assistant_se = [list(x) for x in assistant_se]
    weights = torch.ones(n * times)
    if mode == "curvature":
        c = torch.zeros(n)
        for i in range(n):
            uc, un = curvature(h[i], user_se[i][0] + 1, user_se[i][1] + 1)
            ac, an = curvature(h[i], assistant_se[i][0] + 1, assistant_se[i][1] + 1)
            if un + an > 0:
                c[i] = (uc + ac) / (un + an)
        return c.mean()
    if mode == "e2e":
        user = torch.stack([h[i, user_se[i][1]] - h[i, user_se[i][0]] for i in range(n)])
        assistant = torch.stack([h[i, assistant_se[i][1]] - h[i, assistant_se[i][0]] for i in range(n)])
    elif mode == "mean":
        user = torch.stack([h[i, user_se[i][0] + 1 : user_se[i][1] + 1].mean(0) for i in range(n)])
        assistant = torch.stack([h[i, assistant_se[i][0] + 1 : assistant_se[i][1] + 1].mean(0) for i in range(n)])
    else:
        user_list, assistant_list = [], []
        for j in range(n * times):
            i = j // times
            if span_e2e:
                assistant_se[i][0] = user_se[i][1]
            if span_all:
                user_se[i][0] = 0
            full = (user_se[i][1] - user_se[i][0]) + (assistant_se[i][1] - assistant_se[i][0])
            s, t = offsets[j]
            before, patch, after = embeddings(h[i], user_se[i], assistant_se[i], s, t)
            user_list.append(before + after)
            assistant_list.append(patch)
            weights[j] = weight(full, t - s, adjustment)
        user, assistant = torch.stack(user_list), torch.stack(assistant_list)
    if predictor is not None:
        user = predictor(user)
    if mse:
        return torch.mean((user - assistant) ** 2)
    cos = F.cosine_similarity(user, assistant, dim=-1)
    return 1.0 - torch.sum(cos * weights) / torch.sum(weights)


def upstream_draws(
    lengths: list[int],
    seed: int = 42,
    zero: bool = False,
    max_length: int = -1,
    draw_both: bool = False,
    uniform: bool = False,
) -> list[tuple[int, int]]:
    """The offsets upstream's get_s_t draws, in order, from its generator (CPU, seeded seed + 3 * rank,
    rank 0): one per length given (per example and draw, in upstream's loop order)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    out = []
    for n in lengths:
        if draw_both:
            while True:
                a = torch.randint(0, n, (1,), generator=g)
                b = torch.randint(1, n + 1, (1,), generator=g)
                s, t = int(torch.min(a, b)), int(torch.max(a, b))
                if zero:
                    s = 0
                if max_length >= 0 and t - s > max_length:
                    t = s + max_length
                if s < t and t - s < n:
                    break
        elif uniform:
            total = n * (n + 1) // 2
            while True:
                r = torch.randint(total, (1,), generator=g, dtype=torch.long)
                two_n_plus_1 = 2 * n + 1
                s_t = torch.floor((two_n_plus_1 - torch.sqrt(two_n_plus_1**2 - 8 * r.float())) / 2).long()
                prev = s_t * (2 * n - s_t + 1) // 2
                s, t = int(s_t), int(s_t + 1 + (r - prev))
                if t - s < n:
                    break
        else:
            s = 0 if zero else int(torch.randint(0, n, (), generator=g))
            end_exclusive = n + 1 if max_length < 0 else min(n + 1, s + 1 + max_length)
            while True:
                t = int(torch.randint(s + 1, end_exclusive, (), generator=g))
                if t - s < n:
                    break
        out.append((s, t))
    return out
