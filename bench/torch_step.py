"""PyTorch side of `npm run bench:compare`: the same LoRA training steps as bench/train.ts, written
directly in torch (no transformers): GPT-2-124M shape (batch 1 x 128) and a small Llama (d 128, 4 layers,
4 heads / 2 KV heads, batch 8 x 128); LoRA r=16 (alpha 32) on every linear layer of the blocks, AdamW,
random init. Prints one JSON line: {"case", "threads", "stepMs", "tokensPerS", "peakRssMiB"}.
usage: python3 bench/torch_step.py CASE THREADS STEPS [WARMUP (2)]"""
import json, math, resource, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

case, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 2
torch.set_num_threads(threads)
torch.manual_seed(0)


class LoraLinear(nn.Module):
    def __init__(self, i, o, r=16, alpha=32, bias=True):
        super().__init__()
        self.base = nn.Linear(i, o, bias=bias)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, i) * 0.01)
        self.B = nn.Parameter(torch.zeros(o, r))
        self.s = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.s


def attention(q, k, v, H, Hkv):
    B, T, _ = q.shape
    hd = q.shape[-1] // H
    q = q.view(B, T, H, hd).transpose(1, 2)
    k = k.view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    v = v.view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float('-inf')).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(B, T, H * hd)


class Gpt2Block(nn.Module):
    def __init__(self, d, H):
        super().__init__()
        self.H = H
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.proj = LoraLinear(d, 3 * d), LoraLinear(d, d)
        self.fc, self.fc2 = LoraLinear(d, 4 * d), LoraLinear(4 * d, d)

    def forward(self, x):
        q, k, v = self.attn(self.ln1(x)).chunk(3, -1)
        x = x + self.proj(attention(q, k, v, self.H, self.H))
        return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate='tanh'))


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d), requires_grad=False)

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w


def rope(x, H):
    B, T, D = x.shape
    hd = D // H
    x = x.view(B, T, H, hd)
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[None, :, None], torch.cat([ang.sin()] * 2, -1)[None, :, None]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return (x * cos + torch.cat([-b, a], -1) * sin).view(B, T, D)


class LlamaBlock(nn.Module):
    def __init__(self, d, H, Hkv, inter):
        super().__init__()
        self.H, self.Hkv = H, Hkv
        hd = d // H
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v = LoraLinear(d, d, bias=False), LoraLinear(d, Hkv * hd, bias=False), LoraLinear(d, Hkv * hd, bias=False)
        self.o = LoraLinear(d, d, bias=False)
        self.gate, self.up, self.down = LoraLinear(d, inter, bias=False), LoraLinear(d, inter, bias=False), LoraLinear(inter, d, bias=False)

    def forward(self, x):
        h = self.n1(x)
        x = x + self.o(attention(rope(self.q(h), self.H), rope(self.k(h), self.Hkv), self.v(h), self.H, self.Hkv))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class LM(nn.Module):
    def __init__(self, blocks, V, d, tied, pos=None):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.pos = nn.Embedding(pos, d) if pos else None
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d) if pos else RMSNorm(d)
        self.head = None if tied else nn.Linear(d, V, bias=False)
        for p in [self.emb.weight] + ([self.pos.weight] if pos else []) + ([self.head.weight] if self.head is not None else []):
            p.requires_grad_(False)

    def forward(self, ids):
        x = self.emb(ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(ids.shape[1]))[None]
        for b in self.blocks:
            x = b(x)
        x = self.norm(x)
        return x @ (self.emb.weight if self.head is None else self.head.weight).t()


if case == 'gpt2-124M':
    model, V, B, T = LM([Gpt2Block(768, 12) for _ in range(12)], 50257, 768, True, pos=1024), 50257, 1, 128
elif case == 'small-llama':
    model, V, B, T = LM([LlamaBlock(128, 4, 2, 320) for _ in range(4)], 259, 128, False), 259, 8, 128
else:
    raise SystemExit(f'unknown case {case}')
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
ids = (torch.arange(B * T) * 7919 % V).view(B, T)


def step():
    logits = model(ids)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(warmup):
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
ms = (time.perf_counter() - t0) / steps * 1000
print(json.dumps({'case': case, 'threads': threads, 'stepMs': ms, 'tokensPerS': B * T / (ms / 1000),
                  'peakRssMiB': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
